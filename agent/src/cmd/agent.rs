//! `ferry agent`: the node agent (`ferry_daemon`) with its settings from flags and environment,
//! a kube client from a kubeconfig or the pod's service account, SIGTERM/SIGINT for a graceful
//! stop; and `ferry hold`, what its mover pods run.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::cli::AgentArgs;
use crate::exit;
use ferry_daemon::expose::PodSettings;
use ferry_daemon::metrics::Metrics;
use ferry_daemon::repos::PasswordRef;

pub async fn run(a: &AgentArgs) -> Result<i32> {
    let config = match &a.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("no --kubeconfig and not in a pod (KUBERNETES_SERVICE_HOST and the service account token)")?,
    };
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let settings = ferry_daemon::Settings {
        node: a.node.clone(),
        namespace: a.namespace.clone(),
        datamover: a.datamover.clone(),
        host_pods: a.host_pods.clone(),
        state_dir: a.state_dir.clone(),
        concurrency: a.concurrency.into(),
        prepare_queue: a.prepare_queue.into(),
        memory_budget: a.memory_mib.saturating_mul(1 << 20),
        upload_budget: a.upload_mib.saturating_mul(1 << 20),
        threads,
        password: PasswordRef { secret: a.password_secret.clone(), key: a.password_key.clone() },
        pod: PodSettings {
            image: a.mover_image.clone(),
            command: vec!["ferry".into(), "hold".into()],
            read_only: a.read_only_clones,
        },
        progress_interval: a.progress_interval,
        pickup_timeout: a.pickup_timeout,
    };
    let metrics = Arc::new(Metrics::default());
    let agent = ferry_daemon::Agent::new(client, settings, metrics.clone())?;
    let listener = ferry_daemon::metrics::bind(a.metrics_addr).await?;
    tokio::spawn(ferry_daemon::metrics::serve(listener, metrics));
    tracing::info!(node = %a.node, namespace = %a.namespace, "ferry agent started");
    ferry_daemon::run(agent, stop_signal()).await?;
    Ok(exit::OK)
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Wait for SIGTERM or SIGINT, then exit 0.
pub async fn hold() -> Result<i32> {
    stop_signal().await;
    Ok(exit::OK)
}
