//! Which Services stay cluster-local: never merged with the same-named Services of remote
//! clusters ("namespace sameness" applies to everything else).
//!
//! Istio's rules (MeshConfig `serviceSettings`, pilot/pkg/serviceregistry/provider
//! `clusterLocalProvider`): `*.kube-system.svc.cluster.local` is cluster-local by default, and a
//! mesh config may mark hosts cluster-local or not, which replaces the default for what it
//! names. Added here: the API server's own `kubernetes.default` is always cluster-local (a
//! pod's API calls must never go to another region's API server), and a Service may decide for
//! itself with the annotation [`ANNOTATION`].

use crate::config::ServiceSettingsEntry;

/// The cluster domain Service hosts are matched in.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// Istio's default cluster-local hosts.
pub const DEFAULT_CLUSTER_LOCAL: [&str; 1] = ["*.kube-system.svc.cluster.local"];
/// Never merged, whatever the settings say.
pub const API_SERVER: (&str, &str) = ("default", "kubernetes");
/// `"true"`: this Service stays cluster-local; `"false"`: it is merged, whatever the settings.
pub const ANNOTATION: &str = "geosteer.io/cluster-local";

/// Whether a Service is merged across clusters, and why (for `geosteer services`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub cluster_local: bool,
    pub why: String,
}

/// `name.namespace.svc.cluster.local`.
pub fn host(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.{CLUSTER_DOMAIN}")
}

/// How specifically `pattern` matches `host` (higher wins), or None. An exact host beats any
/// wildcard; a longer wildcard suffix beats a shorter one.
fn specificity(pattern: &str, host: &str) -> Option<usize> {
    if pattern == host {
        return Some(usize::MAX);
    }
    if pattern == "*" {
        return Some(0);
    }
    let suffix = pattern.strip_prefix('*')?;
    host.ends_with(suffix).then_some(suffix.len())
}

/// Checks a `hosts` entry: `*`, `*.suffix` or a full host name.
pub fn host_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("must not be empty".into());
    }
    let rest = pattern.strip_prefix("*.").unwrap_or(pattern);
    if pattern != "*" && (rest.contains('*') || rest.is_empty()) {
        return Some(format!(
            "{pattern:?}: a wildcard may only be the whole first label, as in \
             \"*.kube-system.svc.cluster.local\""
        ));
    }
    None
}

pub fn scope(
    namespace: &str,
    name: &str,
    annotation: Option<&str>,
    settings: &[ServiceSettingsEntry],
) -> Scope {
    let scope = |cluster_local, why: String| Scope { cluster_local, why };
    if (namespace, name) == API_SERVER {
        return scope(
            true,
            "the API server's Service is never merged across clusters".into(),
        );
    }
    match annotation.map(str::trim) {
        Some("true") => return scope(true, format!("annotation {ANNOTATION}: \"true\"")),
        Some("false") => return scope(false, format!("annotation {ANNOTATION}: \"false\"")),
        _ => {}
    }
    let host = host(namespace, name);
    // The most specific matching host of the settings; a later entry wins a tie.
    let mut best: Option<(usize, bool, &str)> = None;
    for entry in settings {
        for pattern in &entry.hosts {
            if let Some(s) = specificity(pattern, &host)
                && best.is_none_or(|(b, _, _)| s >= b)
            {
                best = Some((s, entry.settings.cluster_local, pattern));
            }
        }
    }
    if let Some((_, cluster_local, pattern)) = best {
        return scope(
            cluster_local,
            format!("kubernetes.serviceSettings: {pattern:?} clusterLocal: {cluster_local}"),
        );
    }
    for pattern in DEFAULT_CLUSTER_LOCAL {
        if specificity(pattern, &host).is_some() {
            return scope(
                true,
                format!("Istio's default: {pattern:?} is cluster-local"),
            );
        }
    }
    scope(
        false,
        "merged by namespace/name (namespace sameness)".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceSettingsFlags;

    fn entry(cluster_local: bool, hosts: &[&str]) -> ServiceSettingsEntry {
        ServiceSettingsEntry {
            settings: ServiceSettingsFlags { cluster_local },
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn istios_defaults_the_api_server_settings_and_annotations() {
        let merge_kube_system = [entry(false, &["*.kube-system.svc.cluster.local"])];
        let local_team = [
            entry(true, &["*.payments.svc.cluster.local"]),
            entry(false, &["ledger.payments.svc.cluster.local"]),
        ];
        let everything_local = [entry(true, &["*"])];
        // (case, namespace, name, annotation, settings, cluster-local)
        let cases: [(
            &str,
            &str,
            &str,
            Option<&str>,
            &[ServiceSettingsEntry],
            bool,
        ); 10] = [
            ("an application", "default", "reviews", None, &[], false),
            ("kube-dns", "kube-system", "kube-dns", None, &[], true),
            ("the API server", "default", "kubernetes", None, &[], true),
            (
                "the API server, whatever the settings",
                "default",
                "kubernetes",
                Some("false"),
                &[entry(false, &["*"])],
                true,
            ),
            (
                "kube-system merged on request",
                "kube-system",
                "metrics",
                None,
                &merge_kube_system,
                false,
            ),
            (
                "a team's namespace kept local",
                "payments",
                "api",
                None,
                &local_team,
                true,
            ),
            (
                "one host of it merged: more specific",
                "payments",
                "ledger",
                None,
                &local_team,
                false,
            ),
            (
                "everything local",
                "default",
                "reviews",
                None,
                &everything_local,
                true,
            ),
            (
                "the annotation wins over the settings",
                "default",
                "reviews",
                Some("false"),
                &everything_local,
                false,
            ),
            (
                "the annotation alone",
                "default",
                "reviews",
                Some("true"),
                &[],
                true,
            ),
        ];
        for (case, namespace, name, annotation, settings, expected) in cases {
            let scope = scope(namespace, name, annotation, settings);
            assert_eq!(scope.cluster_local, expected, "{case}: {}", scope.why);
        }
        assert_eq!(
            scope("kube-system", "kube-dns", None, &[]).why,
            "Istio's default: \"*.kube-system.svc.cluster.local\" is cluster-local"
        );
    }

    #[test]
    fn host_patterns_are_checked() {
        for ok in [
            "*",
            "*.kube-system.svc.cluster.local",
            "a.b.svc.cluster.local",
        ] {
            assert_eq!(host_problem(ok), None, "{ok}");
        }
        for bad in ["", "kube-*.svc.cluster.local", "*.", "a.*.svc"] {
            assert!(host_problem(bad).is_some(), "{bad:?}");
        }
    }
}
