//! A fake API server: enough of list, watch, discovery, `/version` and status patches for the
//! Kubernetes source. Objects are JSON, as the real server sends them; it can be made
//! unreachable and reachable again. Two faces: behind kube's `Client` on a `tower_test` mock
//! service (the source's unit tests), and over HTTP as a process (`geosteer-fake-apiserver`,
//! the stand-in API server the end-to-end tests run the real agent against).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

#[cfg(test)]
use ::kube::{Client, client::Body};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The collections the source watches or reads, by the kind in an object's `kind` field.
const COLLECTIONS: [(&str, &str); 7] = [
    ("Secret", "/api/v1/secrets"),
    ("Pod", "/api/v1/pods"),
    ("Service", "/api/v1/services"),
    ("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices"),
    ("Node", "/api/v1/nodes"),
    (
        "TrafficPolicy",
        "/apis/geosteer.io/v1alpha1/trafficpolicies",
    ),
    (
        "DestinationRule",
        "/apis/networking.istio.io/v1/destinationrules",
    ),
];

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// An open watch: where its events go and which objects it asked for.
struct Watcher {
    tx: mpsc::UnboundedSender<Value>,
    scope: Scope,
    bookmarks: bool,
}

/// A namespaced path and a `metadata.name` field selector narrow a list or watch.
#[derive(Clone, Default)]
struct Scope {
    namespace: Option<String>,
    name: Option<String>,
}

impl Scope {
    fn admits(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        self.namespace
            .as_ref()
            .is_none_or(|ns| meta["namespace"] == ns.as_str())
            && self
                .name
                .as_ref()
                .is_none_or(|name| meta["name"] == name.as_str())
    }
}

#[derive(Default)]
struct State {
    reachable: bool,
    resource_version: u64,
    /// Collection path → objects by namespace/name.
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    /// Collection path → (resourceVersion, watch event) in order, for watches that start
    /// from an older list.
    history: BTreeMap<&'static str, Vec<(u64, Value)>>,
    watchers: BTreeMap<&'static str, Vec<Watcher>>,
    /// Group versions served beyond the built-in ones, e.g. `geosteer.io/v1alpha1`.
    served: BTreeSet<String>,
    /// Status patches received: (namespace/name, body, fieldManager).
    patches: Vec<(String, Value, String)>,
    /// Status patches that changed the object (a patch that changes nothing is not a write,
    /// as on the real server: no new resourceVersion, no watch event).
    status_changes: usize,
    /// Events created (events.k8s.io/v1), with a later series patch folded in.
    events: Vec<Value>,
    /// Watches from a resourceVersion older than this get `410 Gone` (etcd compaction).
    compacted: u64,
    /// Kinds this server's credentials may not read: `403 Forbidden`.
    forbidden: BTreeSet<String>,
    /// When set, requests must carry `Authorization: Bearer <token>` or get `401`.
    token: Option<String>,
    /// Lists answered: (collection, limit, continue).
    lists: Vec<(String, Option<usize>, Option<String>)>,
}

impl FakeApi {
    /// A reachable server that serves the TrafficPolicy and DestinationRule CRDs, with nothing
    /// in it yet.
    pub fn standalone() -> FakeApi {
        FakeApi {
            state: Arc::new(Mutex::new(State {
                reachable: true,
                served: ["geosteer.io/v1alpha1", "networking.istio.io/v1"]
                    .map(String::from)
                    .into(),
                ..State::default()
            })),
        }
    }

    /// [`FakeApi::standalone`] and a kube `Client` talking to it in process.
    #[cfg(test)]
    pub fn new() -> (FakeApi, Client) {
        let fake = FakeApi::standalone();
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let server = server.clone();
                tokio::spawn(async move {
                    match server.answer(request).await {
                        Some(response) => respond.send_response(response),
                        None => respond.send_error(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "fake API server unreachable",
                        )),
                    }
                });
            }
        });
        (fake, Client::new(service, "default"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Stops serving the group version (its CRD is not installed).
    pub fn unserve(&self, group_version: &str) {
        self.lock().served.remove(group_version);
    }

    pub fn set_reachable(&self, reachable: bool) {
        let mut state = self.lock();
        state.reachable = reachable;
        if !reachable {
            // Open watches end, as connections do when the server goes away.
            state.watchers.clear();
        }
    }

    /// Creates or replaces an object and tells the watchers. As on the real server, an object
    /// without `metadata.generation` gets one: 1 when created, one more when its spec changes.
    pub fn apply(&self, mut object: Value) {
        let collection = collection_of(&object);
        let key = object_key(&object);
        let mut state = self.lock();
        let existing = state
            .objects
            .get(collection)
            .and_then(|o| o.get(&key))
            .cloned();
        if object["metadata"]["generation"].is_null() {
            let generation = match &existing {
                None => 1,
                Some(old) => {
                    let old_generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    old_generation + i64::from(old["spec"] != object["spec"])
                }
            };
            object["metadata"]["generation"] = json!(generation);
        }
        if object["status"].is_null()
            && let Some(old) = &existing
        {
            // The main resource does not write status: an update keeps it.
            object["status"] = old["status"].clone();
        }
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.store(collection, key, object, kind);
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let collection = COLLECTIONS.iter().find(|(k, _)| *k == kind).unwrap().1;
        let mut state = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let Some(mut object) = state
            .objects
            .get_mut(collection)
            .and_then(|o| o.remove(&key))
        else {
            return;
        };
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        let event = json!({"type": "DELETED", "object": object});
        state.notify(collection, event);
    }

    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let collection = COLLECTIONS.iter().find(|(k, _)| *k == kind).unwrap().1;
        self.lock()
            .objects
            .get(collection)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn patch_count(&self) -> usize {
        self.lock().patches.len()
    }

    /// Forgets watch history up to now: a watch resumed from an older resourceVersion gets
    /// `410 Gone` and must list again, as after etcd compaction.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.resource_version;
        state.history.clear();
    }

    /// Ends every open watch (a server restart, a load balancer timeout) without going away.
    pub fn end_watches(&self) {
        let mut state = self.lock();
        state.watchers.clear();
    }

    /// Sends a BOOKMARK with the current resourceVersion to the watches that asked for them.
    pub fn bookmark(&self) {
        let mut state = self.lock();
        let version = state.resource_version.to_string();
        for (collection, watchers) in &mut state.watchers {
            let (api_version, kind) = api_version_kind(collection);
            let event = json!({"type": "BOOKMARK", "object": {
                "apiVersion": api_version, "kind": kind,
                "metadata": {"resourceVersion": version}}});
            watchers.retain(|watcher| !watcher.bookmarks || watcher.tx.send(event.clone()).is_ok());
        }
    }

    /// Reading `kind` is forbidden (or allowed again).
    pub fn forbid(&self, kind: &str, forbidden: bool) {
        let mut state = self.lock();
        if forbidden {
            state.forbidden.insert(kind.to_string());
        } else {
            state.forbidden.remove(kind);
        }
    }

    /// Requests must carry this bearer token (None: any request is let in).
    pub fn require_token(&self, token: Option<&str>) {
        let mut state = self.lock();
        state.token = token.map(String::from);
        // Revoked credentials end the watches made with them.
        state.watchers.clear();
    }

    /// The lists answered so far for a kind: (limit, continue token).
    pub fn lists(&self, kind: &str) -> Vec<(Option<usize>, Option<String>)> {
        let collection = COLLECTIONS.iter().find(|(k, _)| *k == kind).unwrap().1;
        self.lock()
            .lists
            .iter()
            .filter(|(c, _, _)| c == collection)
            .map(|(_, limit, token)| (*limit, token.clone()))
            .collect()
    }

    #[cfg(test)]
    async fn answer(&self, request: Request<Body>) -> Option<Response<ResponseBody>> {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let method = request.method().clone();
        let body = if method == http::Method::PATCH || method == http::Method::POST {
            request.into_body().collect_bytes().await.ok()?
        } else {
            Bytes::new()
        };
        self.respond(&method, &path, &query, &body, authorization.as_deref())
    }

    /// The answer to one request (None: unreachable).
    fn respond(
        &self,
        method: &http::Method,
        path: &str,
        query: &str,
        body: &[u8],
        authorization: Option<&str>,
    ) -> Option<Response<ResponseBody>> {
        if !self.lock().reachable {
            return None;
        }
        if let Some(token) = &self.lock().token
            && authorization != Some(format!("Bearer {token}").as_str())
        {
            return Some(status_response(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
            ));
        }
        let path = path.to_string();
        if let Some(response) = self.get_secret(&path) {
            return Some(response);
        }
        if path.starts_with("/apis/events.k8s.io/v1/") {
            let body: Value = serde_json::from_slice(body).ok()?;
            return Some(self.event(method, &path, body));
        }
        if method == http::Method::PATCH {
            let patch: Value = serde_json::from_slice(body).ok()?;
            let manager = query
                .split('&')
                .find_map(|q| q.strip_prefix("fieldManager="))
                .unwrap_or("")
                .to_string();
            return Some(self.patch_status(&path, patch, manager));
        }
        if path == "/version" {
            return Some(json_response(
                StatusCode::OK,
                json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "fake",
                    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
                }),
            ));
        }
        if let Some(group_version) = path.strip_prefix("/apis/")
            && group_version.matches('/').count() == 1
        {
            return Some(self.discovery(group_version));
        }
        let (path, namespace) = cluster_wide(&path);
        let (kind, collection) = *COLLECTIONS.iter().find(|(_, p)| *p == path)?;
        if !self.serves(collection) {
            return Some(not_found(&path));
        }
        if self.lock().forbidden.contains(kind) {
            return Some(status_response(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("{kind} is forbidden: the credentials cannot list or watch it"),
            ));
        }
        let param = |name: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        let name =
            param("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=").map(String::from));
        let scope = Scope { namespace, name };
        if param("watch").as_deref() == Some("true") {
            let since = param("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let bookmarks = param("allowWatchBookmarks").as_deref() == Some("true");
            return Some(self.watch(collection, scope, since, bookmarks));
        }
        Some(self.list(
            collection,
            &scope,
            param("limit").and_then(|l| l.parse().ok()),
            param("continue"),
        ))
    }

    /// One page of a list: `limit` items from the `continue` token (an offset here) on; every
    /// page carries the resourceVersion of the first, as a real server's consistent pages do.
    fn list(
        &self,
        collection: &'static str,
        scope: &Scope,
        limit: Option<usize>,
        token: Option<String>,
    ) -> Response<ResponseBody> {
        let mut state = self.lock();
        state
            .lists
            .push((collection.to_string(), limit, token.clone()));
        let (offset, version) = match token.as_deref().and_then(|t| t.split_once(':')) {
            Some((offset, version)) => (offset.parse().unwrap_or(0), version.to_string()),
            None => (0, state.resource_version.to_string()),
        };
        let all: Vec<Value> = state
            .objects
            .get(collection)
            .map(|o| o.values().filter(|o| scope.admits(o)).cloned().collect())
            .unwrap_or_default();
        let end = limit.map_or(all.len(), |limit| (offset + limit).min(all.len()));
        let items = all.get(offset..end).unwrap_or_default().to_vec();
        let mut metadata = json!({"resourceVersion": version});
        if end < all.len() {
            metadata["continue"] = json!(format!("{end}:{version}"));
        }
        json_response(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": items}),
        )
    }

    /// `GET /api/v1/namespaces/NS/secrets/NAME`.
    fn get_secret(&self, path: &str) -> Option<Response<ResponseBody>> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ["api", "v1", "namespaces", namespace, "secrets", name] = parts[..] else {
            return None;
        };
        Some(match self.object("Secret", namespace, name) {
            Some(secret) => json_response(StatusCode::OK, secret),
            None => not_found(path),
        })
    }

    fn serves(&self, collection: &str) -> bool {
        let group_version = collection
            .strip_prefix("/apis/")
            .and_then(|rest| rest.rsplit_once('/'))
            .map(|(gv, _)| gv);
        match group_version {
            Some(gv @ ("geosteer.io/v1alpha1" | "networking.istio.io/v1")) => {
                self.lock().served.contains(gv)
            }
            _ => true,
        }
    }

    fn discovery(&self, group_version: &str) -> Response<ResponseBody> {
        let resources = match group_version {
            "geosteer.io/v1alpha1" => json!([
                {"name": "trafficpolicies", "singularName": "trafficpolicy", "namespaced": true,
                 "kind": "TrafficPolicy", "verbs": ["get", "list", "watch", "patch"]},
                {"name": "trafficpolicies/status", "singularName": "", "namespaced": true,
                 "kind": "TrafficPolicy", "verbs": ["get", "patch"]},
            ]),
            "networking.istio.io/v1" => json!([
                {"name": "destinationrules", "singularName": "destinationrule",
                 "namespaced": true, "kind": "DestinationRule",
                 "verbs": ["get", "list", "watch"]},
            ]),
            _ => return not_found(group_version),
        };
        if !self.lock().served.contains(group_version) {
            return not_found(group_version);
        }
        json_response(
            StatusCode::OK,
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": resources,
            }),
        )
    }

    fn watch(
        &self,
        collection: &'static str,
        scope: Scope,
        since: u64,
        bookmarks: bool,
    ) -> Response<ResponseBody> {
        let (tx, rx) = mpsc::unbounded_channel::<Value>();
        let mut state = self.lock();
        if since < state.compacted {
            // As the real server: the watch starts, says 410 Gone, and ends.
            let _ = tx.send(json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {since} ({})", state.compacted),
                "reason": "Expired", "code": 410}}));
            drop(tx);
        } else {
            for (version, event) in state.history.get(collection).into_iter().flatten() {
                if *version > since && scope.admits(&event["object"]) {
                    let _ = tx.send(event.clone());
                }
            }
            state.watchers.entry(collection).or_default().push(Watcher {
                tx,
                scope,
                bookmarks,
            });
        }
        let lines = futures::stream::unfold(rx, |mut rx| async move {
            let event = rx.recv().await?;
            let mut line = serde_json::to_vec(&event).unwrap();
            line.push(b'\n');
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from(line))), rx))
        });
        Response::new(StreamBody::new(lines).boxed_unsync())
    }

    /// `POST .../namespaces/NS/events` creates, `PATCH .../events/NAME` updates a series.
    fn event(&self, method: &http::Method, path: &str, body: Value) -> Response<ResponseBody> {
        let mut state = self.lock();
        if method == http::Method::POST {
            let mut event = body;
            if event["metadata"]["name"].is_null() {
                let prefix = event["metadata"]["generateName"]
                    .as_str()
                    .unwrap_or("event.");
                event["metadata"]["name"] = json!(format!("{prefix}{}", state.events.len()));
            }
            if state
                .events
                .iter()
                .any(|e| e["metadata"]["name"] == event["metadata"]["name"])
            {
                return status_response(StatusCode::CONFLICT, "AlreadyExists", "already exists");
            }
            state.events.push(event.clone());
            return json_response(StatusCode::CREATED, event);
        }
        let name = path.rsplit('/').next().unwrap_or("");
        match state
            .events
            .iter_mut()
            .find(|e| e["metadata"]["name"] == name)
        {
            Some(event) => {
                event["series"] = body["series"].clone();
                json_response(StatusCode::OK, event.clone())
            }
            None => not_found(path),
        }
    }

    /// The events created so far.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// Status patches that changed a TrafficPolicy.
    pub fn status_changes(&self) -> usize {
        self.lock().status_changes
    }

    /// The field managers of the status patches received.
    pub fn field_managers(&self) -> BTreeSet<String> {
        self.lock().patches.iter().map(|p| p.2.clone()).collect()
    }

    fn patch_status(&self, path: &str, patch: Value, manager: String) -> Response<ResponseBody> {
        // /apis/geosteer.io/v1alpha1/namespaces/NS/trafficpolicies/NAME/status
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let [_, _, _, _, namespace, "trafficpolicies", name, "status"] = parts[..] else {
            return not_found(path);
        };
        let collection = "/apis/geosteer.io/v1alpha1/trafficpolicies";
        let key = (namespace.to_string(), name.to_string());
        let mut state = self.lock();
        state
            .patches
            .push((format!("{namespace}/{name}"), patch.clone(), manager));
        let Some(mut object) = state
            .objects
            .get(collection)
            .and_then(|o| o.get(&key))
            .cloned()
        else {
            return not_found(path);
        };
        // Optimistic concurrency, as the real server: a write from an older view is refused.
        if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
            && object["metadata"]["resourceVersion"].as_str() != Some(expected)
        {
            return status_response(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version",
            );
        }
        if patch["apiVersion"].is_null() || patch["kind"].is_null() {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "an apply patch names apiVersion and kind",
            );
        }
        if object["status"] != patch["status"] {
            object["status"] = patch["status"].clone();
            state.status_changes += 1;
            state.store(collection, key.clone(), object, "MODIFIED");
        }
        let object = state.objects[collection][&key].clone();
        json_response(StatusCode::OK, object)
    }
}

/// The process: the API plus a control surface for the test driving it, under `/_fake/`:
/// `POST /_fake/apply` (one object, JSON), `POST /_fake/delete/KIND/NAMESPACE/NAME`,
/// `POST /_fake/reachable/true|false`, `/_fake/compact`, `/_fake/end-watches`,
/// `/_fake/bookmark`, `/_fake/forbid/KIND/true|false`, `/_fake/token/TOKEN|none`,
/// `GET /_fake/patches` (status patches: how many, how many
/// changed something, their field managers; and the Events created).
impl FakeApi {
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let api = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(api.http(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn http(&self, request: Request<hyper::body::Incoming>) -> Response<ResponseBody> {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return json_response(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
            }
        };
        if let Some(control) = path.strip_prefix("/_fake/") {
            return self.control(control, &body);
        }
        self.respond(&method, &path, &query, &body, authorization.as_deref()).unwrap_or_else(|| {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "status": "Failure", "message": "unreachable", "code": 503}),
            )
        })
    }

    fn control(&self, what: &str, body: &[u8]) -> Response<ResponseBody> {
        let parts: Vec<&str> = what.split('/').collect();
        match parts[..] {
            ["apply"] => match serde_json::from_slice::<Value>(body) {
                Ok(object) if COLLECTIONS.iter().any(|(k, _)| object["kind"] == *k) => {
                    self.apply(object);
                    json_response(StatusCode::OK, json!({"applied": true}))
                }
                Ok(object) => json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("no collection for kind {}", object["kind"])}),
                ),
                Err(e) => json_response(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
            },
            ["delete", kind, namespace, name] if COLLECTIONS.iter().any(|(k, _)| *k == kind) => {
                self.delete(kind, namespace, name);
                json_response(StatusCode::OK, json!({"deleted": true}))
            }
            ["reachable", on] => {
                self.set_reachable(on == "true");
                json_response(StatusCode::OK, json!({"reachable": on == "true"}))
            }
            ["compact"] => {
                self.compact();
                json_response(StatusCode::OK, json!({"compacted": true}))
            }
            ["end-watches"] => {
                self.end_watches();
                json_response(StatusCode::OK, json!({"ended": true}))
            }
            ["bookmark"] => {
                self.bookmark();
                json_response(StatusCode::OK, json!({"bookmarked": true}))
            }
            ["forbid", kind, on] => {
                self.forbid(kind, on == "true");
                json_response(StatusCode::OK, json!({"forbidden": on == "true"}))
            }
            ["token", token] => {
                self.require_token((token != "none").then_some(token));
                json_response(StatusCode::OK, json!({"token": token}))
            }
            ["patches"] => json_response(
                StatusCode::OK,
                json!({
                    "patches": self.patch_count(),
                    "statusChanges": self.status_changes(),
                    "fieldManagers": self.field_managers(),
                    "events": self.events(),
                }),
            ),
            _ => not_found(what),
        }
    }
}

impl State {
    fn store(
        &mut self,
        collection: &'static str,
        key: (String, String),
        mut object: Value,
        kind: &str,
    ) {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.objects
            .entry(collection)
            .or_default()
            .insert(key, object.clone());
        self.notify(collection, json!({"type": kind, "object": object}));
    }

    fn notify(&mut self, collection: &'static str, event: Value) {
        let version = self.resource_version;
        self.history
            .entry(collection)
            .or_default()
            .push((version, event.clone()));
        if let Some(watchers) = self.watchers.get_mut(collection) {
            watchers.retain(|watcher| {
                !watcher.scope.admits(&event["object"]) || watcher.tx.send(event.clone()).is_ok()
            });
        }
    }
}

fn collection_of(object: &Value) -> &'static str {
    let kind = object["kind"].as_str().expect("objects carry their kind");
    COLLECTIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .unwrap_or_else(|| panic!("no collection for kind {kind}"))
        .1
}

fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

fn json_response(status: StatusCode, body: Value) -> Response<ResponseBody> {
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    let mut response = Response::new(Full::new(bytes).map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// `/api/v1/namespaces/NS/secrets` → (`/api/v1/secrets`, Some(NS)); other paths unchanged.
fn cluster_wide(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts[..] {
        ["api", "v1", "namespaces", namespace, plural] => {
            (format!("/api/v1/{plural}"), Some(namespace.to_string()))
        }
        ["apis", group, version, "namespaces", namespace, plural] => (
            format!("/apis/{group}/{version}/{plural}"),
            Some(namespace.to_string()),
        ),
        _ => (path.to_string(), None),
    }
}

/// `apiVersion` and `kind` of a collection's objects, for bookmarks.
fn api_version_kind(collection: &str) -> (String, &'static str) {
    let kind = COLLECTIONS
        .iter()
        .find(|(_, p)| *p == collection)
        .map_or("", |(k, _)| *k);
    let api_version = match collection.strip_prefix("/apis/") {
        Some(rest) => rest.rsplit_once('/').map_or(rest, |(gv, _)| gv).to_string(),
        None => "v1".to_string(),
    };
    (api_version, kind)
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<ResponseBody> {
    json_response(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn not_found(what: &str) -> Response<ResponseBody> {
    json_response(
        StatusCode::NOT_FOUND,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404,
        }),
    )
}
