//! The edge to the API servers: one task per cluster runs the watchers and a liveness probe and
//! forwards every event to one loop, which owns the [`Index`], sends a fresh [`Config`] when it
//! changes (debounced), writes the snapshot, and writes TrafficPolicy statuses.
//!
//! Static stability: nothing here ever withdraws state because an API server is unreachable.
//! A cluster that stops answering keeps its last objects (and is reported stale); only a remote
//! cluster past `staleTtl` loses its endpoints. At boot, the snapshot stands in until this
//! cluster has been listed.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash as _, Hasher as _},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ::kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, PartialObjectMeta, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery,
    runtime::{WatchStreamExt as _, watcher},
};
use anyhow::{Context as _, Result, bail};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Node, Pod, Secret, Service as K8sService},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep, sleep_until},
};
use tracing::{debug, error, info, warn};

use super::{
    crd::TrafficPolicy,
    events::{PolicyEvent, PolicyEvents},
    index::{Index, ObjectKey, Store, Verdict},
    snapshot::{self, Snapshot, rfc3339},
    status::{ClusterStatus, Origin, PolicyReport, SourceStatus},
};
use crate::config::{Config, KubeSettings};

/// Where the agent's own namespace is found (downward API), for `kubeconfigSecret`.
const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
const DEFAULT_NAMESPACE: &str = "geosteer-system";
/// The key of the kubeconfig in a `kubeconfigSecret`.
const KUBECONFIG_SECRET_KEY: &str = "kubeconfig";
/// Istio serves DestinationRule under these versions (same schema); the first served is used.
const DESTINATION_RULE_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
/// How long a TCP connect to an API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the contact times in the snapshot are refreshed when nothing else changes.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(60);
/// The one field manager of TrafficPolicy status, the same on every node: server-side apply
/// then sees one owner, and an apply that changes nothing is not a write.
pub const STATUS_FIELD_MANAGER: &str = "geosteer-agent";
/// How long after a status write statuses still not current are written again.
const STATUS_RETRY: Duration = Duration::from_secs(30);

/// Timings; the defaults suit a real cluster, tests shorten them.
#[derive(Debug, Clone)]
pub struct Options {
    /// Quiet time after the last event before a new desired state is built.
    pub debounce: Duration,
    /// Longest a change waits while events keep coming.
    pub max_delay: Duration,
    /// How often each API server is probed (`GET /version`).
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// How often a kind whose CRD is not installed is looked for again.
    pub rediscover_interval: Duration,
    /// Status writes wait up to this long (a per-node share of it), so that of the agents that
    /// compute the same status, usually one writes it and the others see it already there.
    pub status_spread: Duration,
    /// Reconnecting with new credentials waits a random pause up to this long.
    pub reconnect_jitter: Duration,
    /// Objects per page of the initial lists (kube-runtime's default).
    pub list_page_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            rediscover_interval: Duration::from_secs(60),
            status_spread: Duration::from_secs(2),
            reconnect_jitter: Duration::from_secs(30),
            list_page_size: 500,
        }
    }
}

/// How to reach a cluster's API server.
#[derive(Clone)]
pub enum Connect {
    /// A client made by the caller (tests: a mock API server).
    Client(Client),
    /// A kubeconfig file.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// A Secret in this cluster holding a kubeconfig under the key `kubeconfig`.
    Secret {
        namespace: String,
        name: String,
        context: Option<String>,
    },
}

/// The Kubernetes source of desired state. Make it with [`KubeSource::connect`] (or
/// [`KubeSource::with_clients`]), take [`KubeSource::status`] if wanted, then [`KubeSource::run`].
pub struct KubeSource {
    file: Config,
    settings: KubeSettings,
    node_name: String,
    local: Client,
    remotes: Vec<(String, Connect)>,
    options: Options,
    status: watch::Sender<SourceStatus>,
    file_updates: Option<watch::Receiver<Config>>,
}

/// What the cluster tasks report to the loop.
enum Update {
    /// Boxed: a Service event is several times the size of any other update.
    Services(Box<watcher::Event<K8sService>>),
    Slices(usize, watcher::Event<EndpointSlice>),
    Nodes(usize, watcher::Event<PartialObjectMeta<Node>>),
    Pods(usize, watcher::Event<PartialObjectMeta<Pod>>),
    /// Cluster `.0` no longer watches Pods (no failoverPriority names a pod label).
    PodsUnwatched(usize),
    Policies(watcher::Event<TrafficPolicy>),
    Rules(watcher::Event<DynamicObject>),
    /// The TrafficPolicy CRD is not installed.
    PoliciesAbsent,
    /// Istio's DestinationRule CRD is not installed.
    RulesAbsent,
    /// Whether cluster `.0`'s API server answered a probe, and why not.
    Contact(usize, bool, Option<String>),
    /// Cluster `.0`'s watch of `.1` failed with `.2`, or works again (None).
    Watch(usize, &'static str, Option<String>),
}

impl KubeSource {
    /// This cluster through the pod's service account (or `$KUBECONFIG` outside a cluster),
    /// the remote clusters as `file.kubernetes.clusters` says; this node's name from the
    /// environment variable `kubernetes.nodeNameEnv`.
    pub async fn connect(file: Config) -> Result<KubeSource> {
        let settings = settings(&file)?;
        let node_name = std::env::var(&settings.node_name_env).with_context(|| {
            format!(
                "kubernetes.nodeNameEnv: environment variable {} (this node's name, from the \
                 downward API's spec.nodeName) is not set",
                settings.node_name_env
            )
        })?;
        let mut local_config = ::kube::Config::infer().await.context(
            "no Kubernetes API configuration (in-cluster service account or $KUBECONFIG)",
        )?;
        local_config.connect_timeout = Some(CONNECT_TIMEOUT);
        let local = Client::try_from(local_config).context("building the Kubernetes client")?;
        let namespace =
            std::env::var(POD_NAMESPACE_ENV).unwrap_or_else(|_| DEFAULT_NAMESPACE.to_string());
        let remotes = settings
            .clusters
            .iter()
            .enumerate()
            .map(|(i, cluster)| {
                let context = cluster.context.clone();
                let connect = match (&cluster.kubeconfig, &cluster.kubeconfig_secret) {
                    (Some(path), None) => Connect::Kubeconfig {
                        path: path.clone(),
                        context,
                    },
                    (None, Some(secret)) => Connect::Secret {
                        namespace: namespace.clone(),
                        name: secret.clone(),
                        context,
                    },
                    _ => bail!(
                        "kubernetes.clusters[{i}]: set exactly one of kubeconfig and \
                         kubeconfigSecret"
                    ),
                };
                Ok((cluster.name.clone(), connect))
            })
            .collect::<Result<_>>()?;
        Ok(Self::with_clients(
            file,
            &node_name,
            local,
            remotes,
            Options::default(),
        ))
    }

    /// With the clients given: `remotes` are (name, how to connect), in the order of
    /// `file.kubernetes.clusters`.
    pub fn with_clients(
        file: Config,
        node_name: &str,
        local: Client,
        remotes: Vec<(String, Connect)>,
        options: Options,
    ) -> KubeSource {
        let settings = file.kubernetes.clone().unwrap_or_default();
        KubeSource {
            file,
            settings,
            node_name: node_name.to_string(),
            local,
            remotes,
            options,
            status: watch::Sender::new(SourceStatus::default()),
            file_updates: None,
        }
    }

    /// The source's state, updated as it changes (for `geosteer status` and `/metrics`).
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// A reloaded config file replaces the file's parts of the desired state (node fallback,
    /// dataplane, defaults, its own services). A change of the `kubernetes` section itself needs
    /// a restart.
    pub fn with_file_updates(mut self, updates: watch::Receiver<Config>) -> Self {
        self.file_updates = Some(updates);
        self
    }

    /// Runs until `tx` is closed. The first config is sent once this cluster has been listed,
    /// or after `kubernetes.startupTimeout` without an answer: then the snapshot's (or, without
    /// a snapshot, the file's alone). After that, one config per change of the desired state.
    pub async fn run(self, tx: mpsc::Sender<Config>) -> Result<()> {
        let KubeSource {
            file,
            settings,
            node_name,
            local,
            remotes,
            options,
            status,
            file_updates,
        } = self;
        let (updates_tx, updates) = mpsc::channel(1024);
        let (pod_labels, pod_labels_rx) = watch::channel(BTreeSet::new());
        let mut tasks = Vec::new();
        let clusters = std::iter::once((file.node.cluster.clone(), Connect::Client(local.clone())))
            .chain(remotes);
        for (i, (name, connect)) in clusters.enumerate() {
            let task = ClusterTask {
                i,
                name,
                connect,
                local: local.clone(),
                updates: updates_tx.clone(),
                options: options.clone(),
                pod_labels: pod_labels_rx.clone(),
                stale_ttl: settings.stale_ttl,
            };
            tasks.push(AbortOnDrop(tokio::spawn(task.run())));
        }
        drop(updates_tx);
        let mut state = Loop::new(file, settings, node_name, local, options, status, tx);
        state.pod_labels = Some(pod_labels);
        let result = state.run(updates, file_updates).await;
        drop(tasks);
        result
    }
}

/// `file.kubernetes`, enabled.
fn settings(file: &Config) -> Result<KubeSettings> {
    match &file.kubernetes {
        Some(settings) if settings.enabled => Ok(settings.clone()),
        _ => bail!("the config file does not enable the kubernetes section"),
    }
}

/// Aborts a task when dropped, so the cluster tasks end with the loop.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Per-cluster connectivity, as the loop tracks it.
#[derive(Debug, Clone, Default)]
struct Contact {
    connected: bool,
    /// Whether a probe has answered or failed yet (for logging the first failure).
    probed: bool,
    last: Option<SystemTime>,
    /// Why the last probe failed.
    error: Option<String>,
    /// Watches that fail, and why (a 403 names the kind the credentials may not read).
    watch_errors: BTreeMap<&'static str, String>,
}

/// The loop's state.
struct Loop {
    file: Config,
    settings: KubeSettings,
    index: Index,
    local: Client,
    options: Options,
    status: watch::Sender<SourceStatus>,
    tx: mpsc::Sender<Config>,
    started: SystemTime,
    contacts: Vec<Contact>,
    origin: Origin,
    /// The last config sent, and when.
    sent: Option<(Config, SystemTime)>,
    /// How many of the sent config's services are the file's (for the snapshot).
    sent_file_services: usize,
    snapshot_written: Option<SystemTime>,
    /// The verdicts of the last build, for the status writer.
    verdicts: BTreeMap<ObjectKey, Verdict>,
    warnings: BTreeSet<String>,
    last_error: Option<String>,
    /// Set when something changed: (first change, last change).
    dirty: Option<(Instant, Instant)>,
    status_due: Option<Instant>,
    status_writer: Option<JoinHandle<()>>,
    /// When statuses were last written (or tried).
    status_attempt: Option<Instant>,
    events: Arc<Mutex<PolicyEvents>>,
    snapshot_config: Option<Config>,
    /// Tells the cluster tasks which pod labels to watch.
    pod_labels: Option<watch::Sender<BTreeSet<String>>>,
}

impl Loop {
    fn new(
        file: Config,
        settings: KubeSettings,
        node_name: String,
        local: Client,
        options: Options,
        status: watch::Sender<SourceStatus>,
        tx: mpsc::Sender<Config>,
    ) -> Loop {
        let events = Arc::new(Mutex::new(PolicyEvents::new(local.clone(), &node_name)));
        let mut index = Index::new(&file, &node_name);
        let mut contacts = vec![Contact::default(); index.clusters.len()];
        // The snapshot seeds remote clusters not heard from yet and stands in for this one at
        // boot if its API server does not answer.
        let mut snapshot_config = None;
        match snapshot::read(&settings.snapshot_path) {
            Ok(None) => info!(path = %settings.snapshot_path.display(), "no snapshot yet"),
            Ok(Some(snapshot)) => match snapshot.config(&file, &node_name) {
                Ok(config) => {
                    index.seed = snapshot.seed();
                    index.last_accepted = snapshot.accepted();
                    let last = snapshot.last_contact();
                    for (cluster, contact) in index.clusters.iter().zip(&mut contacts) {
                        contact.last = last.get(&cluster.name).copied();
                    }
                    info!(
                        path = %settings.snapshot_path.display(),
                        written = %snapshot.written_at,
                        services = snapshot.services.len(),
                        "read the snapshot"
                    );
                    snapshot_config = Some(config);
                }
                Err(e) => warn!("ignoring the snapshot: {e:#}"),
            },
            Err(e) => warn!("ignoring the snapshot: {e:#}"),
        }
        Loop {
            file,
            settings,
            index,
            local,
            options,
            status,
            tx,
            started: SystemTime::now(),
            contacts,
            origin: Origin::Waiting,
            sent: None,
            sent_file_services: 0,
            snapshot_written: None,
            verdicts: BTreeMap::new(),
            warnings: BTreeSet::new(),
            last_error: None,
            dirty: None,
            status_due: None,
            status_writer: None,
            status_attempt: None,
            events,
            snapshot_config,
            pod_labels: None,
        }
    }

    async fn run(
        &mut self,
        mut updates: mpsc::Receiver<Update>,
        mut file_updates: Option<watch::Receiver<Config>>,
    ) -> Result<()> {
        let startup = sleep(self.settings.startup_timeout);
        tokio::pin!(startup);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let far = || Instant::now() + Duration::from_secs(3600);
        loop {
            let build_at = self
                .dirty
                .map(|(first, last)| {
                    (last + self.options.debounce).min(first + self.options.max_delay)
                })
                .unwrap_or_else(far);
            let status_at = self.status_due.unwrap_or_else(far);
            tokio::select! {
                update = updates.recv() => {
                    let Some(update) = update else { bail!("every cluster task ended") };
                    self.apply(update);
                }
                Some(config) = next_file(&mut file_updates) => {
                    if config.kubernetes != self.file.kubernetes {
                        warn!("the kubernetes section changed: it takes effect at the next agent start");
                    }
                    self.file = config;
                    self.touch();
                }
                () = sleep_until(build_at), if self.dirty.is_some() => {
                    self.dirty = None;
                    if !self.build().await {
                        return Ok(());
                    }
                }
                () = &mut startup, if self.origin == Origin::Waiting => {
                    if !self.boot_without_api_server().await {
                        return Ok(());
                    }
                }
                () = sleep_until(status_at), if self.status_due.is_some() => {
                    self.status_due = None;
                    self.write_statuses();
                }
                _ = tick.tick() => {
                    self.expire_stale_clusters();
                    self.retry_statuses();
                }
                () = self.tx.closed() => return Ok(()),
            }
            self.publish_status();
        }
    }

    fn touch(&mut self) {
        let now = Instant::now();
        self.dirty = Some(match self.dirty {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    fn apply(&mut self, update: Update) {
        let clusters = &mut self.index.clusters;
        let changed = match update {
            Update::Services(event) => clusters[0].services.apply(*event),
            Update::Slices(i, event) => {
                let relisted = matches!(event, watcher::Event::InitDone);
                let changed = clusters[i].slices.apply(event);
                if relisted && clusters[i].expired {
                    info!(cluster = %clusters[i].name, "listed again: its endpoints are back");
                    clusters[i].expired = false;
                }
                changed
            }
            // Only labels count: a status update (a new resourceVersion, same labels) of a Node or
            // Pod changes nothing, and must not cost a rebuild.
            Update::Nodes(i, event) => {
                let same = same_labels(&clusters[i].nodes, &event);
                clusters[i].nodes.apply(event) && !same
            }
            Update::Pods(i, event) => {
                let same = same_labels(&clusters[i].pods, &event);
                clusters[i].pods.apply(event) && !same
            }
            Update::PodsUnwatched(i) => {
                self.contacts[i].watch_errors.remove("Pods");
                let had = !clusters[i].pods.is_empty();
                clusters[i].pods = Default::default();
                had
            }
            Update::Policies(event) => clusters[0].policies.apply(event),
            Update::Rules(event) => clusters[0].rules.apply(event),
            Update::PoliciesAbsent => clusters[0].policies.set_absent(),
            Update::RulesAbsent => clusters[0].rules.set_absent(),
            Update::Watch(i, what, error) => {
                let errors = &mut self.contacts[i].watch_errors;
                match error {
                    Some(error) => errors.insert(what, error),
                    None => errors.remove(what),
                };
                false
            }
            Update::Contact(i, ok, error) => {
                let contact = &mut self.contacts[i];
                contact.error = error;
                if ok {
                    if !contact.connected {
                        info!(cluster = %clusters[i].name, "API server answers");
                    }
                    if !contact.connected && contact.probed {
                        // Back: the watches resume from their resourceVersions and report
                        // again if they still fail. (An expired cluster counts again only once
                        // it has been listed afresh: see `ClusterTask::run`.)
                        contact.watch_errors.clear();
                    }
                    contact.last = Some(SystemTime::now());
                } else if contact.connected || !contact.probed {
                    warn!(
                        cluster = %clusters[i].name,
                        last_answer = %contact.last.map(rfc3339).unwrap_or_else(|| "never".into()),
                        "API server unreachable: keeping its last known state"
                    );
                }
                contact.connected = ok;
                contact.probed = true;
                false
            }
        };
        if changed {
            self.touch();
        }
    }

    /// A remote cluster unreachable for longer than `staleTtl` loses its endpoints.
    fn expire_stale_clusters(&mut self) {
        let ttl = self.settings.stale_ttl;
        if ttl.is_zero() {
            return;
        }
        let now = SystemTime::now();
        let mut changed = false;
        for (cluster, contact) in self.index.clusters.iter_mut().zip(&self.contacts).skip(1) {
            let stale_for = now
                .duration_since(contact.last.unwrap_or(self.started))
                .unwrap_or_default();
            if !contact.connected && !cluster.expired && stale_for > ttl {
                warn!(
                    cluster = %cluster.name,
                    stale_s = stale_for.as_secs(),
                    "unreachable for longer than staleTtl: dropping its endpoints"
                );
                cluster.expired = true;
                changed = true;
            }
        }
        if changed {
            self.touch();
        }
        if self.origin == Origin::Cluster
            && self
                .snapshot_written
                .is_none_or(|at| now.duration_since(at).unwrap_or_default() > SNAPSHOT_REFRESH)
        {
            self.write_snapshot();
        }
    }

    /// Starts, changes or stops the Pod watches as the policies' failoverPriority labels ask.
    fn update_pod_watch(&self, desired: &Config) {
        let wanted = super::index::pod_label_keys(desired);
        if let Some(tx) = &self.pod_labels {
            tx.send_if_modified(|current| {
                let changed = *current != wanted;
                if changed {
                    info!(labels = ?wanted, "pod labels for failoverPriority");
                    *current = wanted;
                }
                changed
            });
        }
    }

    /// Builds the desired state and sends it if it changed; `false` once the receiver is gone.
    async fn build(&mut self) -> bool {
        if !self.index.local_synced() {
            return true;
        }
        let desired = match self.index.desired(&self.file) {
            Ok(desired) => desired,
            Err(errors) => {
                let message: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let message = message.join("\n");
                if self.last_error.as_ref() != Some(&message) {
                    error!(
                        "the config file's own parts are invalid with this cluster's state; \
                         keeping the running state:\n{message}"
                    );
                    self.last_error = Some(message);
                }
                return true;
            }
        };
        self.last_error = None;
        self.update_pod_watch(&desired.config);
        let warnings: BTreeSet<String> = desired.warnings.iter().cloned().collect();
        for warning in warnings.difference(&self.warnings) {
            warn!("{warning}");
        }
        self.warnings = warnings;
        if self.status_due.is_none() && self.statuses_stale() {
            self.status_due = Some(Instant::now() + self.status_delay());
        }
        let verdicts_changed = desired.verdicts != self.verdicts;
        self.verdicts = desired.verdicts;
        if verdicts_changed {
            self.publish_node_events();
        }
        self.index.last_accepted = desired.in_effect;

        let unchanged = self
            .sent
            .as_ref()
            .is_some_and(|(sent, _)| *sent == desired.config);
        if unchanged && self.origin == Origin::Cluster {
            return true;
        }
        let services = desired.config.services.len();
        if self.tx.send(desired.config.clone()).await.is_err() {
            return false;
        }
        info!(services, "desired state from Kubernetes sent");
        self.origin = Origin::Cluster;
        self.sent = Some((desired.config, SystemTime::now()));
        self.sent_file_services = desired.file_services;
        self.write_snapshot();
        true
    }

    /// Called when this cluster has not been listed within the startup timeout.
    async fn boot_without_api_server(&mut self) -> bool {
        let (config, origin) = match self.snapshot_config.take() {
            Some(config) => (config, Origin::Snapshot),
            None => {
                let mut config = self.file.clone();
                config.node.name = self.index.node_name.clone();
                (config, Origin::File)
            }
        };
        warn!(
            timeout = %crate::config::format_duration(self.settings.startup_timeout),
            origin = origin.name(),
            services = config.services.len(),
            "this cluster's API server has not answered: booting from the last known state"
        );
        if self.tx.send(config.clone()).await.is_err() {
            return false;
        }
        self.origin = origin;
        self.sent = Some((config, SystemTime::now()));
        true
    }

    fn write_snapshot(&mut self) {
        let Some((config, _)) = &self.sent else {
            return;
        };
        let now = SystemTime::now();
        let contact: BTreeMap<String, SystemTime> = self
            .index
            .clusters
            .iter()
            .zip(&self.contacts)
            .filter_map(|(cluster, contact)| Some((cluster.name.clone(), contact.last?)))
            .collect();
        let snapshot = Snapshot::of(
            config,
            self.sent_file_services,
            &contact,
            &self.index.last_accepted,
            now,
        );
        match snapshot::write(&self.settings.snapshot_path, &snapshot) {
            Ok(()) => debug!(path = %self.settings.snapshot_path.display(), "snapshot written"),
            Err(e) => warn!("writing the snapshot: {e:#}"),
        }
        self.snapshot_written = Some(now);
    }

    fn status_delay(&self) -> Duration {
        status_delay(&self.index.node_name, self.options.status_spread)
    }

    /// Statuses still not current a while after the last attempt (a write failed, e.g. the
    /// API server was away) are tried again.
    fn retry_statuses(&mut self) {
        let idle = self.status_due.is_none()
            && self
                .status_writer
                .as_ref()
                .is_none_or(|writer| writer.is_finished());
        let waited = self
            .status_attempt
            .is_none_or(|at| at.elapsed() >= STATUS_RETRY);
        if idle && waited && self.index.local_synced() && self.statuses_stale() {
            self.status_due = Some(Instant::now() + self.status_delay());
        }
    }

    /// Whether some TrafficPolicy's status is not yet what its spec asks for.
    fn statuses_stale(&self) -> bool {
        self.index
            .local()
            .policies
            .values()
            .any(|policy| !policy.status_is_current())
    }

    /// Writes, in the background, the statuses that differ from what each TrafficPolicy's
    /// spec asks for, by server-side apply under one field manager for every node; a write
    /// that changed the status also publishes the verdict as an Event.
    fn write_statuses(&mut self) {
        if self
            .status_writer
            .as_ref()
            .is_some_and(|writer| !writer.is_finished())
        {
            self.status_due = Some(Instant::now() + self.options.debounce);
            return;
        }
        let now = SystemTime::now();
        let stale: Vec<TrafficPolicy> = self
            .index
            .local()
            .policies
            .values()
            .filter(|policy| !policy.status_is_current())
            .cloned()
            .collect();
        if stale.is_empty() {
            return;
        }
        self.status_attempt = Some(Instant::now());
        let client = self.local.clone();
        let events = self.events.clone();
        self.status_writer = Some(tokio::spawn(async move {
            for policy in stale {
                let namespace = policy.metadata.namespace.clone().unwrap_or_default();
                let name = policy.metadata.name.clone().unwrap_or_default();
                let status = policy.wanted_status(now);
                let api: Api<TrafficPolicy> = Api::namespaced(client.clone(), &namespace);
                // The resourceVersion this node judged: a node whose view is older (another
                // node wrote first, or a newer generation exists) gets 409 and writes nothing.
                let patch = Patch::Apply(serde_json::json!({
                    "apiVersion": "geosteer.io/v1alpha1",
                    "kind": "TrafficPolicy",
                    "metadata": {"resourceVersion": policy.metadata.resource_version},
                    "status": status,
                }));
                let params = PatchParams::apply(STATUS_FIELD_MANAGER).force();
                match api.patch_status(&name, &params, &patch).await {
                    Ok(written)
                        if written.metadata.resource_version
                            == policy.metadata.resource_version =>
                    {
                        debug!(%namespace, %name, "TrafficPolicy status already current");
                    }
                    Ok(written) => {
                        debug!(%namespace, %name, "TrafficPolicy status written");
                        // Changed by this node's write: it tells the verdict, once per
                        // generation for the cluster.
                        let condition = &status.conditions[0];
                        let accepted = condition.status == "True";
                        let event = PolicyEvent {
                            warning: !accepted,
                            reason: if accepted { "Accepted" } else { "Invalid" },
                            note: if accepted {
                                format!(
                                    "generation {} is valid",
                                    policy.metadata.generation.unwrap_or(0)
                                )
                            } else {
                                condition.message.clone()
                            },
                        };
                        events.lock().unwrap().publish(&written, event);
                    }
                    Err(::kube::Error::Api(status)) if status.code == 409 => {
                        debug!(%namespace, %name, "TrafficPolicy changed meanwhile: not written");
                    }
                    Err(e) => warn!(%namespace, %name, error = %e, "writing TrafficPolicy status"),
                }
            }
        }));
    }

    /// Publishes, per TrafficPolicy, why this node does not apply a valid one (once per
    /// generation and reason, rate-limited): a fact about this node, not the object.
    fn publish_node_events(&self) {
        let mut events = self.events.lock().unwrap();
        let policies = &self.index.local().policies;
        events.retain(|(namespace, name)| policies.get(namespace, name).is_some());
        for ((namespace, name), verdict) in &self.verdicts {
            let Some(policy) = policies.get(namespace, name) else {
                continue;
            };
            // An invalid object is the status's (and the writer's Event) to tell.
            if verdict.accepted || policy.spec.validate().is_err() {
                continue;
            }
            events.publish(
                policy,
                PolicyEvent {
                    warning: true,
                    reason: "NotInEffect",
                    note: format!(
                        "node {}: {} ({})",
                        self.index.node_name, verdict.message, verdict.reason
                    ),
                },
            );
        }
    }

    fn publish_status(&self) {
        let endpoints = |name: &str| {
            self.sent.as_ref().map_or(0, |(config, _)| {
                config
                    .services
                    .iter()
                    .flat_map(|s| &s.endpoints)
                    .filter(|e| e.cluster == name)
                    .count()
            })
        };
        let now = SystemTime::now();
        let status = SourceStatus {
            origin: self.origin,
            last_change: self.sent.as_ref().map(|(_, at)| rfc3339(*at)),
            clusters: self
                .index
                .clusters
                .iter()
                .zip(&self.contacts)
                .map(|(cluster, contact)| ClusterStatus {
                    name: cluster.name.clone(),
                    connected: contact.connected,
                    last_contact: contact.last.map(rfc3339),
                    stale_seconds: if contact.connected {
                        0
                    } else {
                        let since = contact.last.unwrap_or(self.started);
                        now.duration_since(since).unwrap_or_default().as_secs()
                    },
                    synced: cluster.slices.is_synced(),
                    expired: cluster.expired,
                    endpoints: endpoints(&cluster.name),
                    errors: contact
                        .error
                        .iter()
                        .map(|e| format!("API server: {e}"))
                        .chain(
                            contact
                                .watch_errors
                                .iter()
                                .map(|(what, e)| format!("{what}: {e}")),
                        )
                        .collect(),
                })
                .collect(),
            policies_accepted: self.verdicts.values().filter(|v| v.accepted).count(),
            policies_rejected: self.verdicts.values().filter(|v| !v.accepted).count(),
            policies_not_in_effect: self
                .verdicts
                .iter()
                .filter(|(_, v)| !v.accepted)
                .map(|((namespace, name), v)| PolicyReport {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    reason: v.reason.to_string(),
                    message: v.message.clone(),
                })
                .collect(),
        };
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

async fn next_file(updates: &mut Option<watch::Receiver<Config>>) -> Option<Config> {
    match updates {
        Some(updates) => match updates.changed().await {
            Ok(()) => Some(updates.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A node's share of `spread`, the same on every run: nodes that compute the same status
/// write it one after the other, and the later ones find it already written.
pub(super) fn status_delay(node_name: &str, spread: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    node_name.hash(&mut hasher);
    let spread = spread.as_millis().max(1) as u64;
    Duration::from_millis(hasher.finish() % spread)
}

/// A pause in `0..=max`, different on every node and every time.
fn jitter(max: Duration) -> Duration {
    let max_ms = max.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(fastrand::u64(0..=max_ms))
}

/// The kubeconfig a remote cluster is reached with, kept current: a `kubeconfigSecret` is
/// watched (one object, in the agent's namespace: cheap for the API server, and a rotation
/// arrives at once), a `kubeconfig` file is read again every probe interval. `None` until
/// first read; an error while none could be read.
struct Credentials {
    rx: Option<watch::Receiver<Option<Result<String, String>>>>,
    _task: Option<AbortOnDrop>,
}

impl Credentials {
    fn start(connect: &Connect, local: &Client, options: &Options) -> Credentials {
        let (tx, rx) = watch::channel(None);
        let task = match connect.clone() {
            Connect::Client(_) => {
                return Credentials {
                    rx: None,
                    _task: None,
                };
            }
            Connect::Kubeconfig { path, context } => {
                let interval = options.probe_interval;
                tokio::spawn(async move {
                    let mut rejected = String::new();
                    loop {
                        let read = match std::fs::read_to_string(&path) {
                            Err(e) => Err(format!("reading kubeconfig {}: {e}", path.display())),
                            // Checked as the client will read it (paths relative to the file).
                            Ok(text) => match Kubeconfig::read_from(&path) {
                                Err(e) => {
                                    Err(format!("reading kubeconfig {}: {e}", path.display()))
                                }
                                Ok(parsed) => usable(parsed, context.as_deref())
                                    .await
                                    .map(|()| text)
                                    .map_err(|e| format!("kubeconfig {}: {e}", path.display())),
                            },
                        };
                        offer(&tx, read, &mut rejected);
                        sleep(interval).await;
                    }
                })
            }
            Connect::Secret {
                namespace,
                name,
                context,
            } => {
                let api = Api::<Secret>::namespaced(local.clone(), &namespace);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                tokio::spawn(async move {
                    let stream = watcher(api, config).default_backoff();
                    futures::pin_mut!(stream);
                    let mut found = false;
                    let mut rejected = String::new();
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(
                                watcher::Event::Apply(secret) | watcher::Event::InitApply(secret),
                            ) => {
                                found = true;
                                let at = format!("Secret {namespace}/{name}");
                                let read = match kubeconfig_of(&secret, &namespace, &name) {
                                    Err(e) => Err(e),
                                    Ok(text) => match Kubeconfig::from_yaml(&text) {
                                        Err(e) => Err(format!("{at}: reading kubeconfig: {e}")),
                                        Ok(parsed) => usable(parsed, context.as_deref())
                                            .await
                                            .map(|()| text)
                                            .map_err(|e| format!("{at}: {e}")),
                                    },
                                };
                                offer(&tx, read, &mut rejected);
                            }
                            Ok(watcher::Event::Delete(_)) => warn!(
                                "Secret {namespace}/{name} was deleted: keeping the \
                                 credentials read last"
                            ),
                            Ok(watcher::Event::Init) => found = false,
                            Ok(watcher::Event::InitDone) if !found => offer(
                                &tx,
                                Err(format!("Secret {namespace}/{name} does not exist")),
                                &mut rejected,
                            ),
                            Ok(_) => {}
                            Err(e) => offer(
                                &tx,
                                Err(format!("watching Secret {namespace}/{name}: {e}")),
                                &mut rejected,
                            ),
                        }
                    }
                })
            }
        };
        Credentials {
            rx: Some(rx),
            _task: Some(AbortOnDrop(task)),
        }
    }

    /// The latest read, marked seen.
    fn current(&mut self) -> Option<Result<String, String>> {
        self.rx.as_mut()?.borrow_and_update().clone()
    }

    /// Resolves when new credentials arrive (never, for a client given by the caller).
    async fn changed(&mut self) {
        let changed = match self.rx.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether a kubeconfig makes a client configuration for its context (named, or current):
/// its cluster and user exist, certificates and token files read. A rotated kubeconfig that
/// does not is refused, and the credentials in use stay.
async fn usable(kubeconfig: Kubeconfig, context: Option<&str>) -> Result<(), String> {
    let options = KubeConfigOptions {
        context: context.map(String::from),
        ..KubeConfigOptions::default()
    };
    ::kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map(|_| ())
        .map_err(|e| format!("unusable kubeconfig: {e}"))
}

/// Publishes a read if it is new; an error never replaces credentials that were read (it is
/// logged, once per distinct error, and the credentials in use stay).
fn offer(
    tx: &watch::Sender<Option<Result<String, String>>>,
    read: Result<String, String>,
    rejected: &mut String,
) {
    tx.send_if_modified(|current| {
        let keep = match (&*current, &read) {
            (Some(Ok(_)), Err(e)) => {
                if *e != *rejected {
                    warn!("keeping the credentials read last: {e}");
                    rejected.clone_from(e);
                }
                true
            }
            (Some(old), new) => old == new,
            (None, _) => false,
        };
        if !keep {
            rejected.clear();
            *current = Some(read);
        }
        !keep
    });
}

/// The kubeconfig text in a `kubeconfigSecret`.
fn kubeconfig_of(secret: &Secret, namespace: &str, name: &str) -> Result<String, String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(KUBECONFIG_SECRET_KEY))
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {KUBECONFIG_SECRET_KEY:?}"))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| format!("Secret {namespace}/{name}: kubeconfig is not UTF-8"))
}

/// One cluster's watchers and liveness probe.
struct ClusterTask {
    i: usize,
    name: String,
    connect: Connect,
    /// This cluster's client, to read `kubeconfigSecret`s.
    local: Client,
    updates: mpsc::Sender<Update>,
    options: Options,
    /// The pod label keys failoverPriority names (empty: Pods are not watched).
    pod_labels: watch::Receiver<BTreeSet<String>>,
    /// `kubernetes.staleTtl` (0: never).
    stale_ttl: Duration,
}

impl ClusterTask {
    /// Connects with the current credentials, runs the watchers and probes the API server.
    /// An outage does not restart the watchers: each resumes from its resourceVersion with
    /// kube's jittered exponential backoff (a relist only on `410 Gone`), so nodes do not all
    /// list everything again at once. New credentials (the Secret or kubeconfig file changed)
    /// reconnect, after a jittered pause.
    async fn run(self) {
        let mut last_error = String::new();
        let mut credentials = Credentials::start(&self.connect, &self.local, &self.options);
        // The first read of the credentials is under way: give it a moment before calling the
        // cluster unreachable for want of them.
        if credentials.rx.is_some() {
            let _ = tokio::time::timeout(self.options.probe_timeout, credentials.changed()).await;
        }
        loop {
            let client = match self.client(credentials.current()).await {
                Ok(client) => client,
                Err(e) => {
                    let message = format!("{e:#}");
                    if message != last_error {
                        warn!(cluster = %self.name, "cannot reach the API server: {message}");
                        last_error = message.clone();
                    }
                    if self
                        .updates
                        .send(Update::Contact(self.i, false, Some(message)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        () = sleep(self.options.probe_interval) => {}
                        () = credentials.changed() => {}
                    }
                    continue;
                }
            };
            last_error.clear();
            let watchers = self.spawn_watchers(&client);
            let mut last_ok = Instant::now();
            let mut answered = true;
            let mut probe = tokio::time::interval(self.options.probe_interval);
            loop {
                tokio::select! {
                    _ = probe.tick() => {}
                    () = credentials.changed() => {
                        self.pause_before_reconnect("credentials changed: reconnecting with the new ones").await;
                        break;
                    }
                }
                let answer =
                    tokio::time::timeout(self.options.probe_timeout, client.apiserver_version())
                        .await;
                let error = match answer {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("no answer within the probe timeout".to_string()),
                };
                let ok = error.is_none();
                if self
                    .updates
                    .send(Update::Contact(self.i, ok, error))
                    .await
                    .is_err()
                {
                    return;
                }
                // Back after an outage past staleTtl (the loop has dropped a remote cluster's
                // endpoints): list afresh, so that what it knew before the outage never counts
                // again. Measured from the last answer, as the loop measures it; spread over the
                // reconnect jitter, so that the nodes do not all list at once. This cluster is
                // never dropped, and shorter outages resume the watches without a relist.
                let was_down = !answered;
                answered = ok;
                if ok {
                    let expired = was_down
                        && self.i != 0
                        && !self.stale_ttl.is_zero()
                        && last_ok.elapsed() > self.stale_ttl;
                    last_ok = Instant::now();
                    if expired {
                        self.pause_before_reconnect("back after staleTtl: listing it afresh")
                            .await;
                        break;
                    }
                }
            }
            drop(watchers);
        }
    }

    /// A random pause within the reconnect jitter, logged with why: a reconnect lists the
    /// cluster again, and the nodes must not all do it at once.
    async fn pause_before_reconnect(&self, why: &str) {
        let pause = jitter(self.options.reconnect_jitter);
        info!(cluster = %self.name, pause_ms = pause.as_millis() as u64, "{why}");
        sleep(pause).await;
    }

    /// A client from the kubeconfig text (None: this task was given a client).
    async fn client(&self, kubeconfig: Option<Result<String, String>>) -> Result<Client> {
        let (kubeconfig, context) = match (&self.connect, kubeconfig) {
            (Connect::Client(client), _) => return Ok(client.clone()),
            (_, Some(Err(e))) => bail!("{e}"),
            (_, None) => bail!("the credentials have not been read yet"),
            // Read from the file itself: its relative paths (certificates, token files) are
            // relative to it.
            (Connect::Kubeconfig { path, context }, Some(Ok(_))) => (
                Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?,
                context,
            ),
            (Connect::Secret { context, .. }, Some(Ok(text))) => (
                Kubeconfig::from_yaml(&text).context("reading the kubeconfig")?,
                context,
            ),
        };
        let options = KubeConfigOptions {
            context: context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .context("kubeconfig")?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        Client::try_from(config).context("building the client")
    }

    fn spawn_watchers(&self, client: &Client) -> Vec<AbortOnDrop> {
        let i = self.i;
        let updates = &self.updates;
        let config = || watcher::Config::default().page_size(self.options.list_page_size);
        let mut tasks = vec![
            spawn_forward(
                watcher(Api::<EndpointSlice>::all(client.clone()), config()),
                move |e| Update::Slices(i, e),
                updates,
                (i, "EndpointSlices"),
            ),
            spawn_forward(
                // Only the labels matter: metadata-only requests keep Node status off the wire.
                watcher(
                    Api::<PartialObjectMeta<Node>>::all(client.clone()),
                    config(),
                ),
                move |e| Update::Nodes(i, e),
                updates,
                (i, "Nodes"),
            ),
            AbortOnDrop(tokio::spawn(watch_pods(
                client.clone(),
                i,
                self.updates.clone(),
                self.pod_labels.clone(),
                self.options.list_page_size,
            ))),
        ];
        // Services, policies and DestinationRules count only in this cluster: remote clusters
        // contribute endpoints.
        if i == 0 {
            tasks.push(spawn_forward(
                watcher(Api::<K8sService>::all(client.clone()), config()),
                |event| Update::Services(Box::new(event)),
                updates,
                (i, "Services"),
            ));
            tasks.push(AbortOnDrop(tokio::spawn(watch_policies(
                client.clone(),
                updates.clone(),
                self.options.clone(),
            ))));
            tasks.push(AbortOnDrop(tokio::spawn(watch_destination_rules(
                client.clone(),
                updates.clone(),
                self.options.clone(),
            ))));
        }
        tasks
    }
}

/// Forwards a watcher's events to the loop, retrying with kube's jittered backoff (a watch
/// resumes from its resourceVersion; it lists again only on `410 Gone`). Errors go to the
/// loop (for `geosteer status`) and to the log when they differ from the previous one (an
/// outage would otherwise log every retry).
fn spawn_forward<K, S>(
    stream: S,
    wrap: impl Fn(watcher::Event<K>) -> Update + Send + 'static,
    updates: &mpsc::Sender<Update>,
    what: (usize, &'static str),
) -> AbortOnDrop
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let updates = updates.clone();
    AbortOnDrop(tokio::spawn(async move {
        forward(stream, wrap, &updates, what).await;
    }))
}

async fn forward<K, S>(
    stream: S,
    wrap: impl Fn(watcher::Event<K>) -> Update,
    updates: &mpsc::Sender<Update>,
    (i, what): (usize, &'static str),
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    let mut logged = String::new();
    // An error of an earlier watcher of this kind (before a reconnect) may stand: the first
    // event clears it.
    let mut failing = true;
    while let Some(item) = stream.next().await {
        let sent = match item {
            Ok(event) => {
                let was_failing = std::mem::take(&mut failing);
                logged.clear();
                (!was_failing || updates.send(Update::Watch(i, what, None)).await.is_ok())
                    && updates.send(wrap(event)).await.is_ok()
            }
            Err(e) => {
                let message = e.to_string();
                if message != logged {
                    warn!("watching {what} (cluster {i}): {message}");
                    logged = message.clone();
                }
                failing = true;
                updates
                    .send(Update::Watch(i, what, Some(message)))
                    .await
                    .is_ok()
            }
        };
        if !sent {
            return;
        }
    }
}

/// Watches Pod metadata while some failoverPriority names a pod label (`wanted`), keeping
/// only those label keys: the labels reach endpoints through their `targetRef`. Pods are the
/// most numerous objects of a cluster, so the watch is metadata-only and exists only when a
/// policy needs it; a change of the keys lists again.
async fn watch_pods(
    client: Client,
    i: usize,
    updates: mpsc::Sender<Update>,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    page_size: u32,
) {
    loop {
        let keys = wanted.borrow_and_update().clone();
        if keys.is_empty() {
            if updates.send(Update::PodsUnwatched(i)).await.is_err()
                || wanted.changed().await.is_err()
            {
                return;
            }
            continue;
        }
        debug!(cluster = i, keys = ?keys, "watching Pod labels");
        let stream = watcher(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            watcher::Config::default().page_size(page_size),
        )
        .map_ok(move |event| event.modify(|pod| keep_labels(pod, &keys)));
        tokio::select! {
            () = forward(stream, move |e| Update::Pods(i, e), &updates, (i, "Pods")) => return,
            changed = wanted.changed() => if changed.is_err() { return },
        }
    }
}

/// Whether `event` updates an object to the labels it already has.
fn same_labels<K: ::kube::Resource>(store: &Store<K>, event: &watcher::Event<K>) -> bool {
    let watcher::Event::Apply(object) = event else {
        return false;
    };
    let meta = object.meta();
    store
        .get(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
        .is_some_and(|old| old.meta().labels == meta.labels)
}

/// Drops everything of a Pod's metadata but its name, namespace and the labels in `keys`.
fn keep_labels(pod: &mut PartialObjectMeta<Pod>, keys: &BTreeSet<String>) {
    let labels = pod.metadata.labels.take().unwrap_or_default();
    pod.metadata = ObjectMeta {
        name: pod.metadata.name.take(),
        namespace: pod.metadata.namespace.take(),
        labels: Some(
            labels
                .into_iter()
                .filter(|(k, _)| keys.contains(k))
                .collect(),
        ),
        ..ObjectMeta::default()
    };
}

/// Whether a discovery error means "this kind is not served" rather than "no answer".
fn not_served(error: &::kube::Error) -> bool {
    match error {
        ::kube::Error::Api(status) => status.is_not_found(),
        ::kube::Error::Discovery(_) => true,
        _ => false,
    }
}

/// Watches TrafficPolicies once their CRD is installed; until then the loop counts them as none.
async fn watch_policies(client: Client, updates: mpsc::Sender<Update>, options: Options) {
    let gvk = GroupVersionKind::gvk("geosteer.io", "v1alpha1", "TrafficPolicy");
    loop {
        match discovery::pinned_kind(&client, &gvk).await {
            Ok(_) => break,
            Err(e) if not_served(&e) => {
                warn!("the TrafficPolicy CRD is not installed (deploy/crds/); looking again later");
                if updates.send(Update::PoliciesAbsent).await.is_err() {
                    return;
                }
                sleep(options.rediscover_interval).await;
            }
            Err(e) => {
                debug!(error = %e, "looking for the TrafficPolicy CRD");
                sleep(options.probe_interval).await;
            }
        }
    }
    let stream = watcher(
        Api::<TrafficPolicy>::all(client),
        watcher::Config::default().page_size(options.list_page_size),
    );
    forward(stream, Update::Policies, &updates, (0, "TrafficPolicies")).await;
}

/// Watches Istio DestinationRules under the newest version served, once the CRD exists.
async fn watch_destination_rules(client: Client, updates: mpsc::Sender<Update>, options: Options) {
    let resource = 'found: loop {
        let mut answered = true;
        for version in DESTINATION_RULE_VERSIONS {
            let gvk = GroupVersionKind::gvk("networking.istio.io", version, "DestinationRule");
            match discovery::pinned_kind(&client, &gvk).await {
                Ok((resource, _)) => break 'found resource,
                Err(e) if not_served(&e) => {}
                Err(e) => {
                    debug!(error = %e, "looking for Istio's DestinationRule CRD");
                    answered = false;
                }
            }
        }
        if answered {
            debug!("Istio's DestinationRule CRD is not installed; looking again later");
            if updates.send(Update::RulesAbsent).await.is_err() {
                return;
            }
            sleep(options.rediscover_interval).await;
        } else {
            sleep(options.probe_interval).await;
        }
    };
    info!(version = %resource.version, "watching Istio DestinationRules");
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    forward(
        watcher(
            api,
            watcher::Config::default().page_size(options.list_page_size),
        ),
        Update::Rules,
        &updates,
        (0, "DestinationRules"),
    )
    .await;
}
