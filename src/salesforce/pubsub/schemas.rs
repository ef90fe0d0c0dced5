//! Writer schemas by schema id.
//!
//! Each event names the schema that wrote it, and only that schema decodes it; a topic has no
//! one schema for all its events, and `/data/ChangeEvents` none at all (docs/salesforce.md,
//! "Pub/Sub: schemas"; "Failures seen in other clients": decoding with the wrong schema). So
//! the cache is keyed by schema id and nothing else, and a schema is fetched with `GetSchema`
//! the first time an event names it. Parsing also computes the field layout the bitmaps need,
//! once per schema.

use std::collections::HashMap;
use std::sync::Arc;

use super::client::{PubSubConnection, PubSubError};
use crate::salesforce::avro::{ChangeEventSchema, SchemaError};

/// Why a schema is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SchemaFetchError {
    #[error("fetching writer schema {schema_id}: {source}")]
    Fetch {
        schema_id: String,
        #[source]
        source: PubSubError,
    },
    #[error("parsing writer schema {schema_id}: {source}")]
    Parse {
        schema_id: String,
        #[source]
        source: SchemaError,
    },
}

/// Parsed writer schemas, by id.
#[derive(Default)]
pub struct SchemaCache {
    schemas: HashMap<String, Arc<ChangeEventSchema>>,
}

impl SchemaCache {
    /// The schema `schema_id`, fetched through `connection` if not cached yet.
    pub async fn get(
        &mut self,
        connection: &PubSubConnection,
        schema_id: &str,
    ) -> Result<Arc<ChangeEventSchema>, SchemaFetchError> {
        if let Some(schema) = self.schemas.get(schema_id) {
            return Ok(schema.clone());
        }
        let json =
            connection
                .schema_json(schema_id)
                .await
                .map_err(|source| SchemaFetchError::Fetch {
                    schema_id: schema_id.to_owned(),
                    source,
                })?;
        let schema = Arc::new(
            ChangeEventSchema::parse(schema_id, &json).map_err(|source| {
                SchemaFetchError::Parse {
                    schema_id: schema_id.to_owned(),
                    source,
                }
            })?,
        );
        self.schemas.insert(schema_id.to_owned(), schema.clone());
        Ok(schema)
    }

    /// How many schemas are cached.
    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }
}
