//! Storage pools and their volumes: `/1.0/storage-pools`. On a cluster, a request with
//! `?target=MEMBER` (the client's target) creates a pool's pending part on that member,
//! or shows that member's view of it.

use api::types::{StoragePool, StoragePoolPut, StoragePoolState, StoragePoolsPost, StorageVolume};

use crate::client::Client;
use crate::typed::seg;
use crate::{ClientError, Method};

impl Client {
    /// `GET /1.0/storage-pools?recursion=1`.
    pub async fn storage_pools(&self) -> Result<Vec<StoragePool>, ClientError> {
        Ok(self.get_typed("/1.0/storage-pools?recursion=1").await?.0)
    }

    pub async fn storage_pool(&self, name: &str) -> Result<(StoragePool, Option<String>), ClientError> {
        self.get_typed(&format!("/1.0/storage-pools/{}", seg(name))).await
    }

    /// `GET /1.0/storage-pools/{name}/resources`: space and inodes.
    pub async fn storage_pool_resources(&self, name: &str) -> Result<StoragePoolState, ClientError> {
        Ok(self
            .get_typed(&format!("/1.0/storage-pools/{}/resources", seg(name)))
            .await?
            .0)
    }

    pub async fn create_storage_pool(&self, post: &StoragePoolsPost) -> Result<(), ClientError> {
        self.send_typed(Method::POST, "/1.0/storage-pools", Some(post), None)
            .await?;
        Ok(())
    }

    pub async fn update_storage_pool(
        &self,
        name: &str,
        put: &StoragePoolPut,
        etag: Option<&str>,
    ) -> Result<(), ClientError> {
        let path = format!("/1.0/storage-pools/{}", seg(name));
        self.send_typed(Method::PUT, &path, Some(put), etag).await?;
        Ok(())
    }

    pub async fn delete_storage_pool(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/1.0/storage-pools/{}", seg(name));
        self.send_typed::<()>(Method::DELETE, &path, None, None).await?;
        Ok(())
    }

    /// `GET /1.0/storage-pools/{pool}/volumes?recursion=1`.
    pub async fn storage_volumes(&self, pool: &str) -> Result<Vec<StorageVolume>, ClientError> {
        Ok(self
            .get_typed(&format!("/1.0/storage-pools/{}/volumes?recursion=1", seg(pool)))
            .await?
            .0)
    }
}
