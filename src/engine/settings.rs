//! The sync settings an Outreach admin knows from the CRM page.
//!
//! The names mirror `decisions.md` and are the same in the config file (`[sync]`), the admin
//! API body and a `usersync decide` scenario. Validation runs at start-up and on every save; a
//! refused save keeps the old settings and the error names the rule that failed.

use serde::{Deserialize, Serialize};

/// Record deduping on the Email <> Email field mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dedupe {
    Off,
    /// "When syncing from Salesforce into Outreach".
    Inbound,
    /// "When syncing from Outreach into Salesforce": no matching on the inbound side.
    Outbound,
    /// "When syncing both ways".
    #[default]
    Both,
}

impl Dedupe {
    /// Whether an existing Outreach user may be matched by email to a Salesforce user.
    pub fn matches_inbound(self) -> bool {
        matches!(self, Dedupe::Inbound | Dedupe::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dedupe::Off => "off",
            Dedupe::Inbound => "inbound",
            Dedupe::Outbound => "outbound",
            Dedupe::Both => "both",
        }
    }
}

/// The User <> User object mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserMapping {
    /// "Create" checkbox, Salesforce -> Outreach.
    pub inbound_create: bool,
    /// Copy first name, last name and title of the mapped Salesforce user.
    pub inbound_update: bool,
    /// "Automatically remap when Salesforce User is marked Inactive".
    pub auto_remap_on_inactive: bool,
    /// Lock the Outreach user when its Salesforce user is deactivated and none replaces it.
    pub lock_when_inactive: bool,
    /// Outreach field (`custom1`..`custom5`) that receives the mapped Salesforce user id, or "".
    pub mirror_id_field: String,
}

impl Default for UserMapping {
    fn default() -> Self {
        Self {
            inbound_create: true,
            inbound_update: true,
            auto_remap_on_inactive: true,
            lock_when_inactive: false,
            mirror_id_field: "custom1".to_string(),
        }
    }
}

/// The Email <> Email field mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EmailField {
    pub dedupe: Dedupe,
}

/// All settings the decision engine reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    pub user_mapping: UserMapping,
    pub email_field: EmailField,
}

/// A validation rule that a settings save broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "user_mapping.auto_remap_on_inactive requires user_mapping.inbound_create = true \
         (\"Automatically remap when Salesforce User is marked Inactive\" needs the User <> User Create checkbox)"
    )]
    RemapNeedsInboundCreate,
    #[error(
        "user_mapping.auto_remap_on_inactive requires email_field.dedupe = \"both\", not {0:?} \
         (Email <> Email Record Deduping must be \"When syncing both ways\")"
    )]
    RemapNeedsDedupeBoth(String),
    #[error("user_mapping.mirror_id_field must be \"\" or one of custom1..custom5, not {0:?}")]
    MirrorField(String),
}

impl SettingsError {
    /// A stable code naming the rule, for the admin API's 422 body.
    pub fn rule(&self) -> &'static str {
        match self {
            SettingsError::RemapNeedsInboundCreate => "remap_requires_inbound_create",
            SettingsError::RemapNeedsDedupeBoth(_) => "remap_requires_dedupe_both",
            SettingsError::MirrorField(_) => "mirror_id_field_invalid",
        }
    }
}

impl SyncSettings {
    /// Checks the rules of `decisions.md`; the first one broken is returned.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let m = &self.user_mapping;
        if m.auto_remap_on_inactive {
            if !m.inbound_create {
                return Err(SettingsError::RemapNeedsInboundCreate);
            }
            if self.email_field.dedupe != Dedupe::Both {
                return Err(SettingsError::RemapNeedsDedupeBoth(
                    self.email_field.dedupe.as_str().to_string(),
                ));
            }
        }
        self.mirror_slot()?;
        Ok(())
    }

    /// The index (0..5) of the custom field that mirrors the Salesforce id, if any.
    pub fn mirror_slot(&self) -> Result<Option<usize>, SettingsError> {
        let field = self.user_mapping.mirror_id_field.as_str();
        if field.is_empty() {
            return Ok(None);
        }
        match field
            .strip_prefix("custom")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n @ 1..=5) if field.len() == 7 => Ok(Some(n - 1)),
            _ => Err(SettingsError::MirrorField(field.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let s = SyncSettings::default();
        assert!(s.user_mapping.inbound_create);
        assert!(s.user_mapping.inbound_update);
        assert!(s.user_mapping.auto_remap_on_inactive);
        assert!(!s.user_mapping.lock_when_inactive);
        assert_eq!(s.user_mapping.mirror_id_field, "custom1");
        assert_eq!(s.email_field.dedupe, Dedupe::Both);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.mirror_slot(), Ok(Some(0)));
    }

    #[test]
    fn remap_requires_inbound_create() {
        let mut s = SyncSettings::default();
        s.user_mapping.inbound_create = false;
        let err = s.validate().unwrap_err();
        assert_eq!(err, SettingsError::RemapNeedsInboundCreate);
        assert_eq!(err.rule(), "remap_requires_inbound_create");
        assert!(err.to_string().contains("inbound_create"));
    }

    #[test]
    fn remap_requires_dedupe_both() {
        for dedupe in [Dedupe::Off, Dedupe::Inbound, Dedupe::Outbound] {
            let mut s = SyncSettings::default();
            s.email_field.dedupe = dedupe;
            let err = s.validate().unwrap_err();
            assert_eq!(err.rule(), "remap_requires_dedupe_both");
            assert!(err.to_string().contains(dedupe.as_str()), "{err}");
        }
        // Without the remap, any dedupe is fine.
        let mut s = SyncSettings::default();
        s.user_mapping.auto_remap_on_inactive = false;
        s.user_mapping.inbound_create = false;
        s.email_field.dedupe = Dedupe::Off;
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn mirror_field_is_empty_or_custom1_to_5() {
        for (field, ok) in [
            ("", true),
            ("custom1", true),
            ("custom5", true),
            ("custom0", false),
            ("custom6", false),
            ("custom10", false),
            ("Custom1", false),
            ("title", false),
        ] {
            let mut s = SyncSettings::default();
            s.user_mapping.mirror_id_field = field.to_string();
            assert_eq!(s.validate().is_ok(), ok, "{field}");
        }
    }

    #[test]
    fn partial_documents_take_defaults_and_unknown_keys_are_refused() {
        let s: SyncSettings =
            serde_json::from_str(r#"{"user_mapping": {"lock_when_inactive": true}}"#).unwrap();
        assert!(s.user_mapping.lock_when_inactive);
        assert!(s.user_mapping.inbound_create);
        let err =
            serde_json::from_str::<SyncSettings>(r#"{"user_mapping": {"inbound_creat": true}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("inbound_creat"));
    }
}
