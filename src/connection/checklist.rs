//! "Test connection": the checklist of docs/operations.md ("Test connection"), step by step, each
//! passed or failed with the reason and the provider's error as it came.
//!
//! The steps themselves make calls and live with each side's adapter
//! (`salesforce::checklist::test_connection`, `outreach::checklist::test_connection`); this is
//! only the result, shared by the admin API, the CLI, the log and the connection it is kept on
//! (`Connection::last_check`, run by `admin::checks` at start and after every reconnect). A step after a failed one that needs
//! it is not run: it is reported as skipped, so the admin sees where the chain broke.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Side;

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    /// Not run: an earlier step it needs failed.
    Skipped,
}

/// One step of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// A stable name (`token`, `identity`, `can_subscribe`, …).
    pub step: String,
    pub outcome: Outcome,
    /// What was found, in words (who signed in, how many users were read).
    pub detail: String,
    /// The provider's error, when the step failed.
    pub upstream_error: Option<String>,
}

/// The whole checklist of one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checklist {
    pub side: Side,
    pub passed: bool,
    /// When the checklist began.
    pub ran_at: DateTime<Utc>,
    pub steps: Vec<Step>,
}

impl Checklist {
    pub fn new(side: Side) -> Checklist {
        Checklist {
            side,
            passed: true,
            ran_at: Utc::now(),
            steps: Vec::new(),
        }
    }

    pub fn pass(&mut self, step: &str, detail: impl Into<String>) {
        self.steps.push(Step {
            step: step.to_owned(),
            outcome: Outcome::Passed,
            detail: detail.into(),
            upstream_error: None,
        });
    }

    pub fn fail(&mut self, step: &str, detail: impl Into<String>, error: impl ToString) {
        self.passed = false;
        self.steps.push(Step {
            step: step.to_owned(),
            outcome: Outcome::Failed,
            detail: detail.into(),
            upstream_error: Some(error.to_string()),
        });
    }

    /// Marks `steps` as not run because of an earlier failure.
    pub fn skip(&mut self, steps: &[&str]) {
        for step in steps {
            self.steps.push(Step {
                step: (*step).to_owned(),
                outcome: Outcome::Skipped,
                detail: "not run: an earlier step failed".into(),
                upstream_error: None,
            });
        }
    }

    /// One line per step, for the CLI and the log.
    pub fn lines(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| {
                let mark = match s.outcome {
                    Outcome::Passed => "pass",
                    Outcome::Failed => "FAIL",
                    Outcome::Skipped => "skip",
                };
                match &s.upstream_error {
                    Some(error) => format!("{mark}  {:<18} {} — {error}", s.step, s.detail),
                    None => format!("{mark}  {:<18} {}", s.step, s.detail),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_step_fails_the_checklist_and_the_rest_show_as_skipped() {
        let mut list = Checklist::new(Side::Outreach);
        list.pass("token", "access token obtained");
        assert!(list.passed);
        list.fail(
            "read_users",
            "GET /users refused",
            "403 unauthorizedOauthScope",
        );
        list.skip(&["webhook"]);
        assert!(!list.passed);
        assert_eq!(
            list.lines(),
            [
                "pass  token              access token obtained",
                "FAIL  read_users         GET /users refused — 403 unauthorizedOauthScope",
                "skip  webhook            not run: an earlier step failed",
            ]
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["steps"][1]["outcome"], "failed");
    }
}
