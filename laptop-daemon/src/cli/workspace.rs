//! `devd workspace create|list|extend|delete`: namespaces of one's own on
//! the cluster.

use super::WorkspaceCmd;

pub(super) async fn run(cmd: WorkspaceCmd) -> anyhow::Result<()> {
    match cmd {
        WorkspaceCmd::Create {
            ttl,
            name,
            no_receiver,
            timeout,
            address,
            secrets_from,
            node_port,
        } => {
            crate::workspace::create(&crate::workspace::CreateOptions {
                name,
                ttl,
                no_receiver,
                timeout,
                address,
                secrets_from,
                node_port,
            })
            .await
        }
        WorkspaceCmd::List { all, json } => crate::workspace::list(all, json).await,
        WorkspaceCmd::Extend { name, ttl } => crate::workspace::extend(&name, &ttl).await,
        WorkspaceCmd::Delete { name } => crate::workspace::delete(&name).await,
    }
}
