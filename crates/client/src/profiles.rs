//! Profiles: `/1.0/profiles`.

use api::types::{Profile, ProfilePost, ProfilePut, ProfilesPost};

use crate::client::Client;
use crate::typed::seg;
use crate::{ClientError, Method};

impl Client {
    /// `GET /1.0/profiles?recursion=1`.
    pub async fn profiles(&self) -> Result<Vec<Profile>, ClientError> {
        Ok(self.get_typed("/1.0/profiles?recursion=1").await?.0)
    }

    pub async fn profile(&self, name: &str) -> Result<(Profile, Option<String>), ClientError> {
        self.get_typed(&format!("/1.0/profiles/{}", seg(name))).await
    }

    pub async fn create_profile(&self, post: &ProfilesPost) -> Result<(), ClientError> {
        self.send_typed(Method::POST, "/1.0/profiles", Some(post), None)
            .await?;
        Ok(())
    }

    pub async fn update_profile(
        &self,
        name: &str,
        put: &ProfilePut,
        etag: Option<&str>,
    ) -> Result<(), ClientError> {
        let path = format!("/1.0/profiles/{}", seg(name));
        self.send_typed(Method::PUT, &path, Some(put), etag).await?;
        Ok(())
    }

    pub async fn rename_profile(&self, name: &str, new_name: &str) -> Result<(), ClientError> {
        let path = format!("/1.0/profiles/{}", seg(name));
        let body = ProfilePost {
            name: new_name.to_string(),
        };
        self.send_typed(Method::POST, &path, Some(&body), None).await?;
        Ok(())
    }

    pub async fn delete_profile(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/1.0/profiles/{}", seg(name));
        self.send_typed::<()>(Method::DELETE, &path, None, None).await?;
        Ok(())
    }
}
