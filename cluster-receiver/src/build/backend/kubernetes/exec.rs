//! `devd exec` on the Kubernetes backend: the pod exec API (a websocket,
//! `v5.channel.k8s.io`, as `kubectl exec` speaks it) into the service's
//! container of the newest running pod of its Deployment. The receiver's
//! Role grants `pods/exec` for this.

use super::KubernetesBackend;
use crate::build::backend::Failure;
use crate::build::backend::exec::{ExecInput, ExecIo, ExecRequest, copy_output};
use devd_sync::catalog::Service;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, TerminalSize};
use tokio::io::AsyncWriteExt;

/// The exit status a pod exec's final `Status` reports: 0 on `Success`,
/// the code of a `NonZeroExitCode` (in `details.causes`, reason
/// `ExitCode`), else the failure's message.
pub(super) fn exit_status(status: &Status) -> Result<i32, String> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.parse::<i32>().ok());
    match code {
        Some(code) => Ok(code),
        None => Err(status
            .message
            .clone()
            .unwrap_or_else(|| "the command failed without an exit status".into())),
    }
}

impl KubernetesBackend {
    /// Run `req` in `service`'s container of its newest running pod.
    pub(super) async fn exec_in(
        &self,
        workspace: &str,
        service: &Service,
        req: ExecRequest,
        io: ExecIo,
    ) -> Result<i32, Failure> {
        let (pod, container) = self.service_pod(workspace, service, true).await?;
        self.exec_in_pod(&pod, container, req, io).await
    }

    /// Run `req` in `container` of `pod`.
    pub(super) async fn exec_in_pod(
        &self,
        pod: &str,
        container: String,
        req: ExecRequest,
        io: ExecIo,
    ) -> Result<i32, Failure> {
        let params = AttachParams {
            container: Some(container),
            stdin: true,
            stdout: true,
            // A terminal merges the command's error into its output.
            stderr: req.tty.is_none(),
            tty: req.tty.is_some(),
            ..Default::default()
        };
        let api: Api<Pod> = self.api();
        let mut process = api
            .exec(pod, req.argv(), &params)
            .await
            .map_err(|e| super::api_failure(&format!("exec in pod {pod}"), e))?;
        let mut resize = process.terminal_size();
        let size = |s: devd_protocol::message::TermSize| TerminalSize {
            width: s.cols,
            height: s.rows,
        };
        if let (Some(tx), Some(s)) = (resize.as_mut(), req.tty) {
            let _ = tx.try_send(size(s));
        }
        let out = tokio::spawn(copy_output(process.stdout(), false, io.output.clone()));
        let err = tokio::spawn(copy_output(process.stderr(), true, io.output));
        let status = process.take_status();
        let mut stdin = process.stdin();
        let mut input = io.input;
        let pump = async {
            loop {
                match input.recv().await {
                    Some(ExecInput::Data(d)) => {
                        if let Some(s) = stdin.as_mut()
                            && s.write_all(&d).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    // kube closes the command's input when its writer is
                    // dropped (a v5 CLOSE frame).
                    Some(ExecInput::End) => {
                        if let Some(mut s) = stdin.take() {
                            let _ = s.shutdown().await;
                        }
                    }
                    // (A resize that finds kube's queue of 10 full is
                    // dropped: the next one carries the size anyway.)
                    Some(ExecInput::Resize(s)) => {
                        if let Some(tx) = resize.as_mut() {
                            let _ = tx.try_send(size(s));
                        }
                    }
                    None => return,
                }
            }
        };
        let status = tokio::select! {
            s = async { match status { Some(s) => s.await, None => None } } => s,
            // Whoever asked went away: the websocket closes with `process`.
            () = pump => {
                process.abort();
                return Err(Failure::new("the exec's client went away"));
            }
        };
        let _ = out.await;
        let _ = err.await;
        match status {
            Some(s) => exit_status(&s).map_err(|e| Failure::new(format!("exec in pod {pod}: {e}"))),
            None => Err(Failure::new(format!(
                "exec in pod {pod}: the connection ended without the command's exit status"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: serde_json::Value) -> Status {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_exit_status_comes_from_the_final_status() {
        assert_eq!(exit_status(&status(json!({"status": "Success"}))), Ok(0));
        // As kubelet reports a non-zero exit.
        let failed = status(json!({"status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit status 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}));
        assert_eq!(exit_status(&failed), Ok(3));
        let broken = status(json!({"status": "Failure", "reason": "InternalError",
            "message": "container not found (\"web\")"}));
        assert_eq!(
            exit_status(&broken),
            Err("container not found (\"web\")".to_owned())
        );
    }
}
