//! What Outreach answered while one event was applied.
//!
//! The store refuses to record an event when another replica recorded a change to the same
//! email group in the meantime ([`crate::store::StoreError::StaleState`]); the processor then
//! decides the event again on a fresh load. The Outreach calls already made for it cannot be
//! taken back, so before loading again the processor stores the users those calls returned
//! ([`crate::store::Store::keep_superseded_calls`]): the new decision then sees a user the first
//! one created or changed as Outreach has it, and neither creates it again nor repeats the
//! change. This wrapper collects those users on their way through, without the engine or
//! [`crate::roles::processor::apply`] knowing.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::model::outreach_user::{OutreachUser, OutreachUserId, UserAttributes};
use crate::outreach::client::Reply;
use crate::outreach::error::OutreachError;
use crate::roles::processor::apply::OutreachWrites;

/// Passes every write to `outreach` and keeps the users its answers carry.
pub struct Replies<'a, W: ?Sized> {
    outreach: &'a W,
    users: Mutex<Vec<OutreachUser>>,
}

impl<'a, W: OutreachWrites + ?Sized> Replies<'a, W> {
    pub fn new(outreach: &'a W) -> Self {
        Replies {
            outreach,
            users: Mutex::new(Vec::new()),
        }
    }

    /// The users Outreach returned, the latest answer of each, in the order first seen.
    pub fn into_users(self) -> Vec<OutreachUser> {
        let answered = self.users.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut latest: Vec<OutreachUser> = Vec::new();
        for user in answered {
            match latest.iter_mut().find(|known| known.id == user.id) {
                Some(known) => *known = user,
                None => latest.push(user),
            }
        }
        latest
    }

    fn keep<'u>(&self, users: impl IntoIterator<Item = &'u OutreachUser>) {
        let mut kept = self.users.lock().unwrap_or_else(|e| e.into_inner());
        kept.extend(users.into_iter().cloned());
    }
}

#[async_trait]
impl<W: OutreachWrites + ?Sized> OutreachWrites for Replies<'_, W> {
    async fn create_user(
        &self,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        let reply = self.outreach.create_user(attrs).await?;
        self.keep([&reply.value]);
        Ok(reply)
    }

    async fn update_user(
        &self,
        id: OutreachUserId,
        attrs: &UserAttributes,
    ) -> Result<Reply<OutreachUser>, OutreachError> {
        let reply = self.outreach.update_user(id, attrs).await?;
        self.keep([&reply.value]);
        Ok(reply)
    }

    async fn find_users_by_email(
        &self,
        email: &str,
    ) -> Result<Reply<Vec<OutreachUser>>, OutreachError> {
        let reply = self.outreach.find_users_by_email(email).await?;
        self.keep(&reply.value);
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outreach as a list of canned answers.
    struct Canned;

    fn user(id: i64, first_name: &str) -> OutreachUser {
        OutreachUser {
            id: OutreachUserId(id),
            email: format!("u{id}@example.com"),
            username: None,
            first_name: Some(first_name.into()),
            last_name: None,
            title: None,
            locked: false,
            custom: Default::default(),
            updated_at: None,
        }
    }

    #[async_trait]
    impl OutreachWrites for Canned {
        async fn create_user(
            &self,
            _attrs: &UserAttributes,
        ) -> Result<Reply<OutreachUser>, OutreachError> {
            Ok(Reply {
                value: user(7, "created"),
                requests: 1,
            })
        }
        async fn update_user(
            &self,
            id: OutreachUserId,
            _attrs: &UserAttributes,
        ) -> Result<Reply<OutreachUser>, OutreachError> {
            Ok(Reply {
                value: user(id.0, "updated"),
                requests: 1,
            })
        }
        async fn find_users_by_email(
            &self,
            _email: &str,
        ) -> Result<Reply<Vec<OutreachUser>>, OutreachError> {
            Ok(Reply {
                value: vec![user(3, "found")],
                requests: 1,
            })
        }
    }

    #[tokio::test]
    async fn every_answer_is_kept_and_the_latest_of_a_user_wins() {
        let replies = Replies::new(&Canned);
        let attrs = UserAttributes::default();
        replies.create_user(&attrs).await.unwrap();
        replies.find_users_by_email("u3@example.com").await.unwrap();
        replies
            .update_user(OutreachUserId(7), &attrs)
            .await
            .unwrap();
        let users = replies.into_users();
        let seen: Vec<(i64, Option<&str>)> = users
            .iter()
            .map(|u| (u.id.0, u.first_name.as_deref()))
            .collect();
        assert_eq!(seen, vec![(7, Some("updated")), (3, Some("found"))]);
    }
}
