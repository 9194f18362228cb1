//! AWS Secrets Manager (cargo feature `aws`): the secrets thread and its fetches.
//!
//! One OS thread runs a tokio current-thread runtime and owns one SDK client, built with the
//! lean rustls/ring HTTP client, the TLS stack the rest of pglink uses, instead of the SDK's
//! default one (the SDK crates are used without default features; see the `aws` dependencies
//! in `Cargo.toml`). Credentials, region and endpoint come from the standard AWS environment,
//! including `AWS_ENDPOINT_URL_SECRETS_MANAGER`, which the tests use to point the SDK at a
//! local fake.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls;
use tokio::sync::oneshot;

use super::path::Problem;
use super::secrets::{
    ExternalSecrets, FetchedSecret, SecretsError, SecretsOptions, Shared, aws_arns, new_shared,
    parse_secret_document, resolve_with,
};
use super::types::Config;

/// Bound on one refresh round, so a hung endpoint cannot stall refreshing forever.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(60);

/// The running secrets thread.
pub(crate) struct Worker {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Signals the thread and waits for it.
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("pglink: the secrets thread panicked");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type Initial = Result<Arc<Shared>, SecretsError>;

/// Starts the thread and waits for the first resolution.
pub(crate) fn start(
    config: &Config,
    options: SecretsOptions,
) -> Result<(Arc<Shared>, Worker), SecretsError> {
    let config = config.clone();
    let (init_tx, init_rx) = mpsc::channel::<Initial>();
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("pglink-secrets".into())
        .spawn(move || run(config, options, init_tx, stop_rx))
        .map_err(|e| single_error(format!("cannot start the secrets thread: {e}")))?;
    let mut worker = Worker {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    // The thread bounds its own first round by `initial_timeout`; the margin covers the
    // runtime and SDK setup.
    match init_rx.recv_timeout(options.initial_timeout + Duration::from_secs(5)) {
        Ok(Ok(shared)) => Ok((shared, worker)),
        Ok(Err(e)) => {
            worker.shutdown();
            Err(e)
        }
        Err(_) => {
            // Do not wait for a thread that is stuck; it exits once it sees the stop signal.
            worker.stop.take();
            worker.thread.take();
            Err(single_error(format!(
                "timed out after {:?} reading AWS secrets",
                options.initial_timeout
            )))
        }
    }
}

fn single_error(message: String) -> SecretsError {
    SecretsError {
        problems: vec![Problem::new("", message)],
    }
}

/// The secrets thread: first round, report it, then refresh until stopped.
fn run(
    config: Config,
    options: SecretsOptions,
    init_tx: mpsc::Sender<Initial>,
    mut stop: oneshot::Receiver<()>,
) {
    // Its blocking pool (name resolution) is pglink's too: named, and joined when the
    // runtime is dropped at the end of this thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .thread_name("pglink-secrets-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = init_tx.send(Err(single_error(format!(
                "cannot start the secrets runtime: {e}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        let arns = aws_arns(&config);
        let Some(client) = until_stopped(&mut stop, client(options.initial_timeout)).await else {
            return;
        };
        let Some(external) = until_stopped(
            &mut stop,
            fetch_all(&client, &arns, options.initial_timeout),
        )
        .await
        else {
            return;
        };
        let shared = match resolve_with(&config, &external) {
            Ok(resolved) => new_shared(resolved),
            Err(e) => {
                let _ = init_tx.send(Err(e));
                return;
            }
        };
        if init_tx.send(Ok(shared.clone())).is_err() {
            return;
        }
        let Some(interval) = options.refresh_interval else {
            return;
        };
        loop {
            if until_stopped(&mut stop, tokio::time::sleep(interval))
                .await
                .is_none()
            {
                return;
            }
            let Some(external) =
                until_stopped(&mut stop, fetch_all(&client, &arns, REFRESH_TIMEOUT)).await
            else {
                return;
            };
            match resolve_with(&config, &external) {
                Ok(resolved) => {
                    if shared.publish(resolved) {
                        log::info!("pglink: secrets changed; new credentials published");
                    }
                }
                Err(e) => {
                    for problem in &e.problems {
                        log::warn!(
                            "pglink: secrets refresh failed, keeping the previous values: {problem}"
                        );
                    }
                }
            }
        }
    });
}

/// Runs `work` unless the stop signal arrives (or its sender is dropped) first.
async fn until_stopped<F: Future>(stop: &mut oneshot::Receiver<()>, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    poll_fn(|cx| {
        if std::pin::Pin::new(&mut *stop).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        work.as_mut().poll(cx).map(Some)
    })
    .await
}

async fn client(timeout: Duration) -> aws_sdk_secretsmanager::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let attempt = timeout.min(Duration::from_secs(10));
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(attempt.min(Duration::from_secs(5)))
                .operation_attempt_timeout(attempt)
                .build(),
        )
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&sdk)
}

/// Fetches every ARN once, concurrently, each bounded by `timeout`.
async fn fetch_all(
    client: &aws_sdk_secretsmanager::Client,
    arns: &[String],
    timeout: Duration,
) -> ExternalSecrets {
    let mut tasks = tokio::task::JoinSet::new();
    for arn in arns {
        let client = client.clone();
        let arn = arn.clone();
        tasks.spawn(async move {
            let fetched = match tokio::time::timeout(timeout, fetch(&client, &arn)).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {timeout:?}")),
            };
            (arn, parse_secret_document(fetched))
        });
    }
    let mut out = ExternalSecrets::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((arn, doc)) => {
                out.insert(arn, doc);
            }
            Err(e) => log::error!("pglink: a secret fetch task failed: {e}"),
        }
    }
    // A task that died leaves its ARN absent, which resolution reports as "not fetched".
    out
}

async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
) -> Result<FetchedSecret, String> {
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| format!("fetch failed: {}", error_chain(&e)))?;
    Ok(FetchedSecret {
        string: out.secret_string().map(str::to_owned),
        has_binary: out.secret_binary().is_some(),
    })
}

/// "outer: inner: cause" on one line, without the Debug dump `DisplayErrorContext` adds.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}
