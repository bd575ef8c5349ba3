//! What the laptop asks of a workspace's builds besides its saves:
//! `devd retry` (build and deploy again), `devd stop` (stop what runs
//! here) and `devd down` (remove everything the backend created).

use super::*;

impl Pipeline {
    /// Build and deploy `names` (every declared service if empty) again at
    /// the worktree's current content: `devd retry`, and the daemon's
    /// start, after a failure whose cause was outside the worktree (a
    /// missing base image, a container runtime that was not set up). A
    /// service already deployed at that content only reports `Unchanged`.
    /// Returns the names queued; unknown names are refused, naming the
    /// declared ones.
    pub fn retry(self: &Arc<Self>, names: &[String]) -> Result<Vec<String>, String> {
        let st = self.state.lock().expect("pipeline state");
        let declared: Vec<String> = st.catalog.services.iter().map(|s| s.name.clone()).collect();
        if let Some(unknown) = names.iter().find(|n| !declared.contains(n)) {
            return Err(format!(
                "no service named {unknown:?}; devd.toml declares: {}",
                declared.join(", ")
            ));
        }
        let names = if names.is_empty() {
            declared
        } else {
            names.to_vec()
        };
        // The snapshot reads the worktree's generation; this one is only
        // used if none was ever applied.
        let generation = names
            .iter()
            .filter_map(|n| st.services.get(n))
            .map(|s| s.status.generation)
            .max()
            .unwrap_or(0);
        tracing::info!(workspace = %self.workspace, services = ?names, "retry asked");
        self.queue(
            st,
            names.clone(),
            Trigger {
                generation,
                since: Instant::now(),
            },
        );
        Ok(names)
    }

    /// Stop what runs for the declared services on this machine (the
    /// embedded receiver's daemon stopping: `devd stop`); the names of
    /// the services stopped. A backend whose services run elsewhere (a
    /// cluster) stops nothing.
    pub async fn stop_services(&self) -> Result<Vec<String>, String> {
        let services = self.declared();
        self.backend
            .stop(&self.workspace, &services)
            .await
            .map_err(|f| f.error)
    }

    /// Remove everything the backend created for this workspace's
    /// services (`devd down`) and forget what was deployed: one line per
    /// removed thing.
    pub async fn remove_all(&self) -> Result<Vec<String>, String> {
        let services = self.declared();
        let mut removed = self
            .backend
            .remove(&self.workspace, &services)
            .await
            .map_err(|f| f.error)?;
        // The objects of the repository's manifests ([deploy]), even if
        // the catalog no longer has the table.
        removed.extend(
            self.backend
                .remove_stack(&self.workspace)
                .await
                .map_err(|f| f.error)?,
        );
        let _ = std::fs::remove_file(self.records_path());
        let mut st = self.state.lock().expect("pipeline state");
        for (name, svc) in st.services.iter_mut() {
            svc.deployed_context = None;
            svc.failed = false;
            svc.attempted = true;
            svc.status = ServiceStatus::new(name);
        }
        st.stack = Default::default();
        let _ = self.events.send(snapshot_msg(&st));
        Ok(removed)
    }
}
