//! The render over real files, with the real `kubectl kustomize`.

use super::*;
use std::path::PathBuf;

fn write(root: &Path, files: &[(&str, &str)]) {
    for (p, t) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, t).unwrap();
    }
}

const BASE: &[(&str, &str)] = &[
    (
        "deploy/base/kustomization.yaml",
        "resources: [web.yaml, api.yaml, db.yaml]\nconfigMapGenerator:\n- name: web-config\n  literals: [MODE=base]\n",
    ),
    (
        "deploy/base/web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      initContainers:\n      - name: migrate\n        image: api:latest\n        command: [migrate]\n      containers:\n      - name: web\n        image: registry.example/frontend:v1\n        envFrom: [{configMapRef: {name: web-config}}]\n        env:\n        - name: DB_PASSWORD\n          valueFrom: {secretKeyRef: {name: db-credentials, key: password}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    ),
    (
        "deploy/base/api.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\nspec:\n  selector: {matchLabels: {app: api}}\n  template:\n    metadata: {labels: {app: api}}\n    spec:\n      containers:\n      - {name: api, image: api}\n",
    ),
    (
        "deploy/base/db.yaml",
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: prod}\nspec:\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers:\n      - {name: postgres, image: 'postgres:16'}\n",
    ),
    (
        "deploy/dev/kustomization.yaml",
        "resources: [../base]\nconfigMapGenerator:\n- name: web-config\n  behavior: merge\n  literals: [MODE=dev]\n",
    ),
];

const CATALOG: &str = "[deploy]\nkustomize = \"deploy/dev\"\n\n[services.web]\ncontext = \"web\"\nimage = \"frontend\"\n\n[services.api]\ncontext = \"api\"\n";

fn kubectl() -> PathBuf {
    PathBuf::from("kubectl")
}

fn render_in(root: &Path) -> Result<Rendered, RenderError> {
    let catalog =
        Catalog::parse(&std::fs::read_to_string(root.join("devd.toml")).unwrap()).unwrap();
    let image_of = |s: &Service| Some(format!("localhost/{}@sha256:{}", s.image, "a".repeat(64)));
    let k = kubectl();
    render(&Input {
        root,
        catalog: &catalog,
        namespace: "dev-alice",
        image_of: &image_of,
        kubectl: &k,
    })
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), BASE);
    write(dir.path(), &[("devd.toml", CATALOG)]);
    dir
}

fn find<'a>(r: &'a Rendered, key: &str) -> &'a StackObject {
    r.objects
        .iter()
        .find(|o| o.key() == key || o.key().starts_with(&format!("{key}-")))
        .unwrap_or_else(|| {
            panic!(
                "{key} not in {:?}",
                r.objects.iter().map(|o| o.key()).collect::<Vec<_>>()
            )
        })
}

#[test]
fn a_kustomization_renders_with_devd_images_in_the_workspace_namespace() {
    let dir = fixture();
    let r = render_in(dir.path()).unwrap();
    let digest = "a".repeat(64);
    let web = find(&r, "deployment/web");
    let spec = &web.body["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["image"],
        format!("localhost/frontend@sha256:{digest}")
    );
    assert_eq!(
        spec["initContainers"][0]["image"],
        format!("localhost/api@sha256:{digest}")
    );
    // kustomize's hash-suffixed ConfigMap name is referenced.
    let cm = find(&r, "configmap/web-config");
    assert!(cm.name.starts_with("web-config-"), "{}", cm.name);
    assert_eq!(cm.body["data"]["MODE"], "dev");
    assert_eq!(
        spec["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        cm.name.as_str()
    );
    // The Secret reference is kept as written.
    assert_eq!(
        spec["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "db-credentials"
    );
    let db = find(&r, "statefulset/db");
    assert_eq!(
        db.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "postgres:16"
    );
    for o in &r.objects {
        assert_eq!(o.namespace.as_deref(), Some("dev-alice"), "{}", o.key());
        assert_eq!(o.body["metadata"]["namespace"], "dev-alice");
    }
    assert!(
        r.warnings.iter().any(|w| w.contains("\"prod\" replaced")),
        "{:?}",
        r.warnings
    );
    assert_eq!(r.runs["web"], ["deployment/web"]);
    assert_eq!(r.runs["api"], ["deployment/api", "deployment/web"]);
    assert_eq!(r.services_of("web"), ["web"]);
    assert!(r.reads(&RelPath::new("deploy/base/db.yaml").unwrap()));
    assert!(r.reads(&RelPath::new("devd.toml").unwrap()));
    assert!(!r.reads(&RelPath::new("web/index.html").unwrap()));
    // Nothing else changed: the api Deployment is the file's, plus the
    // namespace and the image.
    let api = find(&r, "deployment/api");
    let mut expected: serde_json::Value = serde_saphyr::from_str(BASE[2].1).unwrap();
    expected["metadata"]["namespace"] = "dev-alice".into();
    expected["spec"]["template"]["spec"]["containers"][0]["image"] =
        format!("localhost/api@sha256:{digest}").into();
    assert_eq!(api.body, expected);
}

#[test]
fn plain_manifests_render_by_glob_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("k8s/app/api.yaml", BASE[2].1),
            ("k8s/db/db.yml", BASE[3].1),
            ("k8s/db/README.md", "not a manifest"),
            (
                "devd.toml",
                "[deploy]\nmanifests = [\"k8s/app/*.yaml\", \"k8s/db\"]\n[services.api]\ncontext = \"api\"\n[services.lonely]\ncontext = \"lonely\"\n",
            ),
        ],
    );
    let r = render_in(dir.path()).unwrap();
    let keys: Vec<String> = r.objects.iter().map(|o| o.key()).collect();
    assert_eq!(keys, ["deployment/api", "statefulset/db"]);
    assert_eq!(r.objects[1].source, "k8s/db/db.yml");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("service lonely") && w.contains("runs nowhere")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn bad_manifests_are_refused_with_what_is_wrong() {
    let dir = fixture();
    // kubectl's own error.
    write(
        dir.path(),
        &[(
            "deploy/dev/kustomization.yaml",
            "resources: [../base, missing.yaml]\n",
        )],
    );
    let e = render_in(dir.path()).unwrap_err().to_string();
    assert!(e.contains("missing.yaml"), "{e}");
    // A cluster-scoped object.
    write(
        dir.path(),
        &[
            (
                "deploy/dev/kustomization.yaml",
                "resources: [../base, ns.yaml]\n",
            ),
            (
                "deploy/dev/ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: admin-ish}\n",
            ),
        ],
    );
    let e = render_in(dir.path()).unwrap_err();
    assert_eq!(
        e,
        RenderError::ClusterScoped {
            objects: vec![
                "clusterrole/admin-ish (kustomize deploy/dev)".into(),
                "namespace/prod (kustomize deploy/dev)".into()
            ]
        }
    );
    // An unknown kind is applied, with a warning; a CRD in the render
    // makes its kind known.
    write(
        dir.path(),
        &[
            (
                "deploy/dev/kustomization.yaml",
                "resources: [../base, cr.yaml]\n",
            ),
            (
                "deploy/dev/cr.yaml",
                "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
            ),
        ],
    );
    let r = render_in(dir.path()).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("widget/w") && w.contains("not a built-in kind"))
    );
    write(
        dir.path(),
        &[
            (
                "deploy/dev/crd.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {kind: Widget, plural: widgets}\n",
            ),
            (
                "deploy/dev/kustomization.yaml",
                "resources: [../base, cr.yaml, crd.yaml]\n",
            ),
        ],
    );
    let r = render_in(dir.path()).unwrap();
    assert!(
        !r.warnings.iter().any(|w| w.contains("not a built-in kind")),
        "{:?}",
        r.warnings
    );
    let crd = find(&r, "customresourcedefinition/widgets.example.com");
    assert_eq!(crd.namespace, None);
    // A YAML syntax error names the file and the line.
    write(
        dir.path(),
        &[
            ("devd.toml", "[deploy]\nmanifests = [\"k8s\"]\n"),
            ("k8s/ok.yaml", BASE[2].1),
            (
                "k8s/web.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n",
            ),
        ],
    );
    let e = render_in(dir.path()).unwrap_err().to_string();
    assert!(e.starts_with("k8s/web.yaml:"), "{e}");
    // The same object twice.
    write(dir.path(), &[("k8s/web.yaml", BASE[2].1)]);
    let e = render_in(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("deployment/api is also defined in k8s/ok.yaml"),
        "{e}"
    );
    // An object without a name.
    write(
        dir.path(),
        &[(
            "k8s/web.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: x-}\n",
        )],
    );
    let e = render_in(dir.path()).unwrap_err().to_string();
    assert!(e.contains("no valid metadata.name"), "{e}");
}
