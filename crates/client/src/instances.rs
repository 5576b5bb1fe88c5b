//! Instances: `/1.0/instances`, their state, snapshots, logs, console and files (as the
//! Go client's `incus_instances.go` calls them). Exec is in [`crate::exec`].
//!
//! Every change is an operation (`send_operation`); callers wait on it with
//! [`Client::wait_done`]. Lists take the Go client's server-side filters (`key=value`,
//! sent as `filter=key eq value`), and `?recursion=2` returns state and snapshots too.

use api::types::{
    Instance, InstanceConsolePost, InstanceFull, InstancePost, InstancePut, InstanceSnapshot,
    InstanceSnapshotPost, InstanceSnapshotPut, InstanceSnapshotsPost, InstanceState, InstanceStatePut,
    InstancesPost, Operation,
};
use tokio::io::AsyncWrite;

use crate::client::{Client, Request};
use crate::transfer::{Download, Upgraded, Upload};
use crate::typed::{filter_expression, query_value, seg};
use crate::{ClientError, Method};

/// The `/1.0/instances/{name}` path of an instance.
pub fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{}", seg(name))
}

/// Ownership and type of a file of the files API (`X-Incus-*` headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileHead {
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub mode: Option<u32>,
    /// `file`, `directory` or `symlink`.
    pub kind: String,
}

impl FileHead {
    fn from_headers(h: &http::HeaderMap) -> FileHead {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        FileHead {
            uid: get("x-incus-uid").and_then(|v| v.parse().ok()),
            gid: get("x-incus-gid").and_then(|v| v.parse().ok()),
            mode: get("x-incus-mode").and_then(|v| u32::from_str_radix(&v, 8).ok()),
            kind: get("x-incus-type").unwrap_or_default(),
        }
    }
}

impl Client {
    fn list_path(filters: &[String], recursion: u8, all_projects: bool) -> String {
        let mut path = format!(
            "/1.0/instances?filter={}&recursion={recursion}",
            query_value(&filter_expression(filters))
        );
        if all_projects {
            path.push_str("&all-projects=true");
        }
        path
    }

    /// `GET /1.0/instances?recursion=1` with server-side filters.
    pub async fn instances(
        &self,
        filters: &[String],
        all_projects: bool,
    ) -> Result<Vec<Instance>, ClientError> {
        Ok(self
            .get_typed(&Self::list_path(filters, 1, all_projects))
            .await?
            .0)
    }

    /// `GET /1.0/instances?recursion=2`: with state, snapshots and backups.
    pub async fn instances_full(
        &self,
        filters: &[String],
        all_projects: bool,
    ) -> Result<Vec<InstanceFull>, ClientError> {
        Ok(self
            .get_typed(&Self::list_path(filters, 2, all_projects))
            .await?
            .0)
    }

    pub async fn instance(&self, name: &str) -> Result<(Instance, Option<String>), ClientError> {
        self.get_typed(&instance_path(name)).await
    }

    /// `GET /1.0/instances/{name}?recursion=1`: with state, snapshots and backups.
    pub async fn instance_full(&self, name: &str) -> Result<(InstanceFull, Option<String>), ClientError> {
        self.get_typed(&format!("{}?recursion=1", instance_path(name)))
            .await
    }

    pub async fn create_instance(&self, post: &InstancesPost) -> Result<Operation, ClientError> {
        self.send_operation(Method::POST, "/1.0/instances", Some(post), None)
            .await
    }

    pub async fn update_instance(
        &self,
        name: &str,
        put: &InstancePut,
        etag: Option<&str>,
    ) -> Result<Operation, ClientError> {
        self.send_operation(Method::PUT, &instance_path(name), Some(put), etag)
            .await
    }

    /// `POST /1.0/instances/{name}`: rename, or move (with `migration` and the client's
    /// target).
    pub async fn rename_instance(&self, name: &str, post: &InstancePost) -> Result<Operation, ClientError> {
        self.send_operation(Method::POST, &instance_path(name), Some(post), None)
            .await
    }

    pub async fn delete_instance(&self, name: &str) -> Result<Operation, ClientError> {
        self.send_operation::<()>(Method::DELETE, &instance_path(name), None, None)
            .await
    }

    pub async fn instance_state(&self, name: &str) -> Result<(InstanceState, Option<String>), ClientError> {
        self.get_typed(&format!("{}/state", instance_path(name))).await
    }

    /// `PUT /1.0/instances/{name}/state`: start, stop, restart, freeze, unfreeze.
    pub async fn update_instance_state(
        &self,
        name: &str,
        put: &InstanceStatePut,
        etag: Option<&str>,
    ) -> Result<Operation, ClientError> {
        let path = format!("{}/state", instance_path(name));
        self.send_operation(Method::PUT, &path, Some(put), etag).await
    }

    /// `GET /1.0/instances/{name}/logs/{file}` (e.g. `lxc.log`) into `sink`.
    pub async fn instance_log<W: AsyncWrite + Unpin + ?Sized>(
        &self,
        name: &str,
        file: &str,
        sink: &mut W,
    ) -> Result<Download, ClientError> {
        let path = format!("{}/logs/{}", instance_path(name), seg(file));
        self.download(Request::get(path), sink).await
    }

    /// `GET /1.0/instances/{name}/console`: the console log, into `sink`.
    pub async fn console_log<W: AsyncWrite + Unpin + ?Sized>(
        &self,
        name: &str,
        sink: &mut W,
    ) -> Result<Download, ClientError> {
        let path = format!("{}/console", instance_path(name));
        self.download(Request::get(path), sink).await
    }

    /// `POST /1.0/instances/{name}/console`: a websocket operation (`fds` `0` and
    /// `control`).
    pub async fn console_instance(
        &self,
        name: &str,
        post: &InstanceConsolePost,
    ) -> Result<Operation, ClientError> {
        let path = format!("{}/console", instance_path(name));
        self.send_operation(Method::POST, &path, Some(post), None).await
    }

    /// The websocket of `op` whose secret is `secret`.
    pub async fn operation_websocket(
        &self,
        op: &Operation,
        secret: &str,
    ) -> Result<crate::events::WebSocket, ClientError> {
        let path = format!(
            "/1.0/operations/{}/websocket?secret={}",
            seg(&op.id),
            query_value(secret)
        );
        Ok(self.websocket(&path).await?.0)
    }

    /// `GET /1.0/instances/{name}/snapshots?recursion=1`.
    pub async fn instance_snapshots(&self, name: &str) -> Result<Vec<InstanceSnapshot>, ClientError> {
        Ok(self
            .get_typed(&format!("{}/snapshots?recursion=1", instance_path(name)))
            .await?
            .0)
    }

    pub async fn instance_snapshot(
        &self,
        name: &str,
        snapshot: &str,
    ) -> Result<(InstanceSnapshot, Option<String>), ClientError> {
        self.get_typed(&snapshot_path(name, snapshot)).await
    }

    pub async fn create_instance_snapshot(
        &self,
        name: &str,
        post: &InstanceSnapshotsPost,
    ) -> Result<Operation, ClientError> {
        let path = format!("{}/snapshots", instance_path(name));
        self.send_operation(Method::POST, &path, Some(post), None).await
    }

    pub async fn rename_instance_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        post: &InstanceSnapshotPost,
    ) -> Result<Operation, ClientError> {
        self.send_operation(Method::POST, &snapshot_path(name, snapshot), Some(post), None)
            .await
    }

    pub async fn update_instance_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        put: &InstanceSnapshotPut,
        etag: Option<&str>,
    ) -> Result<Operation, ClientError> {
        self.send_operation(Method::PUT, &snapshot_path(name, snapshot), Some(put), etag)
            .await
    }

    pub async fn delete_instance_snapshot(
        &self,
        name: &str,
        snapshot: &str,
    ) -> Result<Operation, ClientError> {
        self.send_operation::<()>(Method::DELETE, &snapshot_path(name, snapshot), None, None)
            .await
    }

    /// `GET /1.0/instances/{name}/sftp` upgraded to SFTP: the raw stream an SFTP client
    /// speaks on (what `incus file` uses).
    pub async fn instance_sftp(&self, name: &str) -> Result<Upgraded, ClientError> {
        self.upgrade(&format!("{}/sftp", instance_path(name)), "sftp")
            .await
    }

    /// Files API: `GET /1.0/instances/{name}/files?path=P`, a file's content into `sink`.
    pub async fn instance_file_get<W: AsyncWrite + Unpin + ?Sized>(
        &self,
        name: &str,
        file: &str,
        sink: &mut W,
    ) -> Result<FileHead, ClientError> {
        let path = format!("{}/files?path={}", instance_path(name), query_value(file));
        let head = self.download(Request::get(path), sink).await?;
        Ok(FileHead::from_headers(&head.headers))
    }

    /// Files API: `POST /1.0/instances/{name}/files?path=P` with the content streamed,
    /// owner, mode and type in `X-Incus-*` headers (`X-Incus-write: overwrite`).
    pub async fn instance_file_put(
        &self,
        name: &str,
        file: &str,
        head: &FileHead,
        content: Upload,
    ) -> Result<(), ClientError> {
        let path = format!("{}/files?path={}", instance_path(name), query_value(file));
        let h = |n: &'static str| http::HeaderName::from_static(n);
        let mut req = Request::new(Method::POST, path).header(h("x-incus-write"), "overwrite");
        if let Some(uid) = head.uid {
            req = req.header(h("x-incus-uid"), uid.to_string());
        }
        if let Some(gid) = head.gid {
            req = req.header(h("x-incus-gid"), gid.to_string());
        }
        if let Some(mode) = head.mode {
            req = req.header(h("x-incus-mode"), format!("{mode:04o}"));
        }
        if !head.kind.is_empty() {
            req = req.header(h("x-incus-type"), head.kind.clone());
        }
        self.upload(req, content).await?.envelope()?;
        Ok(())
    }

    /// Files API: `DELETE /1.0/instances/{name}/files?path=P`.
    pub async fn instance_file_delete(&self, name: &str, file: &str) -> Result<(), ClientError> {
        let path = format!("{}/files?path={}", instance_path(name), query_value(file));
        self.send_typed::<()>(Method::DELETE, &path, None, None).await?;
        Ok(())
    }
}

fn snapshot_path(name: &str, snapshot: &str) -> String {
    format!("{}/snapshots/{}", instance_path(name), seg(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_list_paths_as_the_go_client_writes_them() {
        assert_eq!(
            Client::list_path(&[], 2, false),
            "/1.0/instances?filter=&recursion=2"
        );
        assert_eq!(
            Client::list_path(&["status=running".into()], 1, true),
            "/1.0/instances?filter=status+eq+running&recursion=1&all-projects=true"
        );
        assert_eq!(
            snapshot_path("c 1", "s/1"),
            "/1.0/instances/c%201/snapshots/s%2F1"
        );
    }

    #[test]
    fn t10_file_heads() {
        let mut h = http::HeaderMap::new();
        h.insert("x-incus-uid", "1000".parse().unwrap());
        h.insert("x-incus-mode", "0644".parse().unwrap());
        h.insert("x-incus-type", "file".parse().unwrap());
        let head = FileHead::from_headers(&h);
        assert_eq!(
            head,
            FileHead {
                uid: Some(1000),
                gid: None,
                mode: Some(0o644),
                kind: "file".into()
            }
        );
    }
}
