//! Kubernetes metadata from where a node writes container logs, as the OpenTelemetry
//! Collector's filelog `container` parser reads it:
//!
//! - `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log` (and the kubelet's
//!   rotated `<restart>.log.<YYYYMMDD-hhmmss>[.gz]`), the files themselves;
//! - `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`, the symlinks
//!   into them.
//!
//! Only the tail of the path is read, so the same layout under any root is recognised.

use std::path::Path;

/// What a container log file's path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sFile {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// From `/var/log/pods/…` only.
    pub pod_uid: Option<String>,
    /// From `/var/log/pods/…` only.
    pub restart_count: Option<u32>,
    /// From `/var/log/containers/…` only.
    pub container_id: Option<String>,
}

impl K8sFile {
    /// The record attributes, with OpenTelemetry's semantic-convention names.
    pub fn attributes(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut attributes = vec![
            ("k8s.namespace.name", self.namespace.clone().into()),
            ("k8s.pod.name", self.pod.clone().into()),
            ("k8s.container.name", self.container.clone().into()),
        ];
        if let Some(uid) = &self.pod_uid {
            attributes.push(("k8s.pod.uid", uid.clone().into()));
        }
        if let Some(restart_count) = self.restart_count {
            attributes.push(("k8s.container.restart_count", restart_count.into()));
        }
        if let Some(container_id) = &self.container_id {
            attributes.push(("container.id", container_id.clone().into()));
        }
        attributes
    }
}

/// The metadata a container log path carries, if it is laid out as a node lays it out.
pub fn k8s_file(path: &Path) -> Option<K8sFile> {
    let file = path.file_name()?.to_str()?;
    let parent = path.parent()?;
    let parent_name = parent.file_name()?.to_str()?;
    if parent_name == "containers" {
        return containers_link(file);
    }
    let pod_dir = parent.parent()?;
    if pod_dir.parent()?.file_name()?.to_str()? != "pods" {
        return None;
    }
    pod_file(pod_dir.file_name()?.to_str()?, parent_name, file)
}

/// [`k8s_file`] of a path and, when it is a link (`/var/log/containers/…` into
/// `/var/log/pods/…`), of where it leads: the pod's uid and restart count come from the
/// target, the container id from the link's name.
pub fn k8s_file_resolved(path: &Path) -> Option<K8sFile> {
    let own = k8s_file(path);
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink());
    let target = is_link
        .then(|| std::fs::canonicalize(path).ok())
        .flatten()
        .and_then(|target| k8s_file(&target));
    match (own, target) {
        (Some(link), Some(mut target)) => {
            target.container_id = target.container_id.or(link.container_id);
            Some(target)
        }
        (own, target) => own.or(target),
    }
}

/// `<pod>_<namespace>_<container>-<64 hex>.log`. Pod and namespace names cannot hold `_`
/// (DNS labels), so the first two underscores split them.
fn containers_link(file: &str) -> Option<K8sFile> {
    let stem = file.strip_suffix(".log")?;
    let (pod, rest) = stem.split_once('_')?;
    let (namespace, rest) = rest.split_once('_')?;
    let (container, container_id) = rest.rsplit_once('-')?;
    let is_id = container_id.len() == 64
        && container_id
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    if pod.is_empty() || namespace.is_empty() || container.is_empty() || !is_id {
        return None;
    }
    Some(K8sFile {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        pod_uid: None,
        restart_count: None,
        container_id: Some(container_id.to_owned()),
    })
}

/// `<namespace>_<pod>_<uid>/<container>/<restart>.log[.<YYYYMMDD-hhmmss>][.gz]`.
fn pod_file(pod_dir: &str, container: &str, file: &str) -> Option<K8sFile> {
    let (namespace, rest) = pod_dir.split_once('_')?;
    let (pod, uid) = rest.split_once('_')?;
    let uid_ok = !uid.is_empty()
        && uid
            .bytes()
            .all(|byte| byte.is_ascii_hexdigit() || byte == b'-');
    let (restart, rotation) = file.split_once(".log")?;
    let rotation = rotation.strip_suffix(".gz").unwrap_or(rotation);
    let rotation_ok = rotation.is_empty() || {
        let stamp = rotation.strip_prefix('.').unwrap_or("");
        stamp.len() == 15
            && stamp.as_bytes()[8] == b'-'
            && stamp
                .bytes()
                .enumerate()
                .all(|(index, byte)| index == 8 || byte.is_ascii_digit())
    };
    let restart_count = restart.parse::<u32>().ok()?;
    if namespace.is_empty() || pod.is_empty() || container.is_empty() || !uid_ok || !rotation_ok {
        return None;
    }
    Some(K8sFile {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        pod_uid: Some(uid.to_owned()),
        restart_count: Some(restart_count),
        container_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7f3c2a1b9d8e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";

    #[test]
    fn containers_symlink_names_give_pod_namespace_container_and_id() {
        let path = format!(
            "/var/log/containers/ts-travel-service-64469b5b48-25zj6_default_ts-travel-service-{ID}.log"
        );
        let file = k8s_file(Path::new(&path)).unwrap();
        assert_eq!(file.pod, "ts-travel-service-64469b5b48-25zj6");
        assert_eq!(file.namespace, "default");
        assert_eq!(file.container, "ts-travel-service");
        assert_eq!(file.container_id.as_deref(), Some(ID));
        assert_eq!(file.restart_count, None);
    }

    #[test]
    fn pod_directories_give_uid_and_restart_count_rotated_or_not() {
        let dir = "/tmp/root/var/log/pods/shop_orders-7d9f8b6c5-x2x9z_5f0c4e2a-1b3d-4c5e-8f9a-0b1c2d3e4f5a/orders";
        for (file, restart) in [
            ("0.log", 0),
            ("3.log", 3),
            ("0.log.20260101-120000", 0),
            ("0.log.20260101-120000.gz", 0),
        ] {
            let found = k8s_file(Path::new(&format!("{dir}/{file}"))).unwrap();
            assert_eq!(found.namespace, "shop", "{file}");
            assert_eq!(found.pod, "orders-7d9f8b6c5-x2x9z");
            assert_eq!(found.container, "orders");
            assert_eq!(
                found.pod_uid.as_deref(),
                Some("5f0c4e2a-1b3d-4c5e-8f9a-0b1c2d3e4f5a")
            );
            assert_eq!(found.restart_count, Some(restart), "{file}");
        }
    }

    #[test]
    fn other_paths_say_nothing() {
        for path in [
            "/var/log/app/orders.log",
            "/var/log/containers/orders.log",
            "/var/log/containers/pod_ns_container-notanid.log",
            "/var/log/pods/ns_pod_uid/container/current.log",
            "/var/log/pods/ns_pod_uid/container/0.log.1",
            "/var/log/pods/nodelimiters/container/0.log",
            "/var/log/other/ns_pod_5f0c/container/0.log",
        ] {
            assert_eq!(k8s_file(Path::new(path)), None, "{path}");
        }
    }
}
