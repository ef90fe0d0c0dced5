//! The admin page in a real browser: headless Chromium (Debian's `chromium`), driven over
//! WebDriver by `chromedriver` (Debian's `chromium-driver`), against the whole process
//! (`usersync run` in process, both simulators, the mock cluster).
//!
//! An admin opens the page, gives the admin token it asks for, sees Salesforce disconnected
//! and why, reconnects from the card's menu, authorizes Salesforce again as another user
//! through the consent page (the browser authorization-code flow), has one settings change
//! refused with the rule's words and one accepted, watches a remap arrive on the live
//! feed, and replays Salesforce from latest after reading the plan. The page is
//! screenshotted at the end into `target/tmp/admin-page.png`.
//!
//! `scripts/test.sh` installs both packages. Without them the test is skipped on a developer
//! machine and fails under CI.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{INTEGRATION_USER, Parts, WAIT};
use usersync_sim::salesforce::pubsub::StreamFault;

const TOKEN: &str = "browser-admin-token";
/// The Salesforce admin who authorizes usersync again from the page.
const SECOND_ADMIN: &str = "second.admin@acme.example";
const CHROMIUM_VAR: &str = "USERSYNC_CHROMIUM";
const CHROMEDRIVER_VAR: &str = "USERSYNC_CHROMEDRIVER";

/// The browser and its driver: from the environment, else where Debian installs them.
fn browser_paths() -> Option<(PathBuf, PathBuf)> {
    let path = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let chromium = path(CHROMIUM_VAR, "/usr/bin/chromium");
    let driver = path(CHROMEDRIVER_VAR, "/usr/bin/chromedriver");
    let missing: Vec<&Path> = [chromium.as_path(), driver.as_path()]
        .into_iter()
        .filter(|p| !p.is_file())
        .collect();
    if missing.is_empty() {
        return Some((chromium, driver));
    }
    let message = format!(
        "the browser test needs {missing:?} (Debian's chromium and chromium-driver; \
         scripts/test.sh installs them, {CHROMIUM_VAR} and {CHROMEDRIVER_VAR} point elsewhere)"
    );
    assert!(std::env::var_os("CI").is_none(), "{message}, and CI is set");
    eprintln!("{message}: skipped");
    None
}

/// `chromedriver` on a loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(binary: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        support::until("chromedriver is ready", || async {
            let status: Option<Value> =
                match http.get(format!("{}/status", driver.url)).send().await {
                    Ok(response) => response.json().await.ok(),
                    Err(_) => None,
                };
            status.is_some_and(|s| s["value"]["ready"] == true)
        })
        .await;
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session with a fresh profile. The flags keep Chromium from calling
/// out to Google's services, which this machine's closed network refuses.
async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1100",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("a Chromium session through {}: {e}", driver.url))
}

/// The text of the first element matching `css`, if there is one.
async fn text(page: &Client, css: &str) -> Option<String> {
    match page.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.ok(),
        Err(_) => None,
    }
}

/// Waits until the text of `css` satisfies `check`; the text it ended on.
async fn until_text(page: &Client, what: &str, css: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = text(page, css).await
            && check(&found)
        {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {what} (`{css}` reads {:?})",
            text(page, css).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(page: &Client, css: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
}

/// Opens the "…" menu of a connection card and clicks one of its items.
async fn card_action(page: &Client, side: &str, action: &str) {
    click(page, &format!("#card-{side} .menu > button")).await;
    click(
        page,
        &format!("#card-{side} button[data-action=\"{action}\"]"),
    )
    .await;
}

/// The settings in force, read from the API with the admin token.
async fn settings_in_force(parts: &Parts) -> Value {
    let response = parts
        .http
        .get(format!("{}/api/v1/settings", parts.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["settings"].clone()
}

/// The admin-action log, read from the API with the admin token.
async fn admin_actions(parts: &Parts) -> Vec<Value> {
    let response = parts
        .http
        .get(format!("{}/api/v1/admin-actions", parts.admin_url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["admin_actions"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_reconnects_changes_settings_and_watches_a_remap_in_the_browser() {
    let Some((chromium, chromedriver)) = browser_paths() else {
        return;
    };
    let mut parts = Parts::new().await;
    parts.config.admin.token = usersync::config::Secret::new(TOKEN);
    let running = parts.start_live().await;
    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let page = browser(&driver, &chromium, profile.path()).await;

    // The page asks for the admin token it needs, and keeps it for the tab.
    page.goto(&parts.admin_url).await.unwrap();
    until_text(&page, "the page asks for the token", "#token-dialog", |t| {
        t.contains("Admin token")
    })
    .await;
    page.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&page, "#token-save").await;
    until_text(
        &page,
        "Salesforce is shown connected, as the integration user",
        "#card-salesforce",
        |t| t.contains("connected") && t.contains(INTEGRATION_USER),
    )
    .await;
    until_text(
        &page,
        "Outreach is shown connected",
        "#card-outreach",
        |t| t.contains("connected"),
    )
    .await;

    // Salesforce disconnects for real: the integration user loses View All Users. The card
    // follows the live feed and says why, and what to do.
    parts.salesforce.set_view_all_users(INTEGRATION_USER, false);
    parts
        .salesforce
        .inject_stream_fault(StreamFault::ResetStream);
    let card = until_text(
        &page,
        "the Salesforce card shows the disconnection",
        "#card-salesforce .state",
        |t| t == "disconnected",
    )
    .await;
    assert_eq!(card, "disconnected");
    let card = text(&page, "#card-salesforce").await.unwrap();
    assert!(card.contains("permissions_changed"), "{card}");
    assert!(card.contains("View All Users"), "the advice: {card}");
    // A change made while disconnected, applied after the reconnect.
    parts.create_salesforce_user("during");

    // The admin gives the permission back and reconnects from the card's menu.
    parts.salesforce.set_view_all_users(INTEGRATION_USER, true);
    card_action(&page, "salesforce", "reconnect").await;
    until_text(
        &page,
        "the Salesforce card shows the reconnection",
        "#card-salesforce .state",
        |t| t == "connected",
    )
    .await;
    support::until("the change made while disconnected arrives", || async {
        parts.in_outreach("during@acme.example")
    })
    .await;

    // The admin authorizes Salesforce again as another user, in the browser: the card's menu,
    // Salesforce's consent page (the simulator signs the second admin in), the callback, and
    // back on the page, which says so and shows the new authorizing user.
    parts.salesforce.add_user(SECOND_ADMIN);
    parts.salesforce.sign_in_at_authorize(Some(SECOND_ADMIN));
    card_action(&page, "salesforce", "authorize").await;
    until_text(&page, "back from the consent page", "#notice", |t| {
        t.starts_with("Salesforce authorized")
    })
    .await;
    assert_eq!(
        page.current_url().await.unwrap().as_str(),
        format!("{}/", parts.admin_url),
        "the outcome is dropped from the address"
    );
    until_text(
        &page,
        "the card shows the new authorizing user",
        "#card-salesforce",
        |t| t.contains(&format!("Authorized as {SECOND_ADMIN}")),
    )
    .await;
    until_text(
        &page,
        "Salesforce is connected as the second admin",
        "#card-salesforce .state",
        |t| t == "connected",
    )
    .await;

    // A refused save: remapping needs inbound create. The page shows the rule's words and
    // puts back the settings in force.
    let before = settings_in_force(&parts).await;
    assert_eq!(before["user_mapping"]["auto_remap_on_inactive"], true);
    click(&page, "input[name=\"inbound_create\"]").await;
    click(&page, "#save").await;
    let refused = until_text(&page, "the refusal is shown", "#settings-message", |t| {
        !t.is_empty()
    })
    .await;
    assert!(
        refused.contains("needs the User <> User Create checkbox"),
        "the message names the rule: {refused}"
    );
    let class = page
        .find(Locator::Id("settings-message"))
        .await
        .unwrap()
        .attr("class")
        .await
        .unwrap();
    assert_eq!(class.as_deref(), Some("message error"));
    assert_eq!(settings_in_force(&parts).await, before, "nothing changed");
    let create_box = page
        .find(Locator::Css("input[name=\"inbound_create\"]"))
        .await
        .unwrap();
    support::until("the form shows the settings in force again", || async {
        create_box.is_selected().await.unwrap()
    })
    .await;

    // An accepted save: lock Outreach users whose Salesforce user leaves with no successor.
    assert_eq!(before["user_mapping"]["lock_when_inactive"], false);
    click(&page, "input[name=\"lock_when_inactive\"]").await;
    click(&page, "#save").await;
    until_text(&page, "the save is confirmed", "#settings-message", |t| {
        t == "Saved."
    })
    .await;
    let after = settings_in_force(&parts).await;
    assert_eq!(after["user_mapping"]["lock_when_inactive"], true);
    assert_eq!(after["user_mapping"]["inbound_create"], true);

    // The remap: X has the Outreach user; Y is created with X's email; X is deactivated.
    let user = |name: &str| parts.create_salesforce_user_with_email(name, "x@acme.example");
    let x = user("x");
    until_text(&page, "X's create is on the feed", "#feed", |t| {
        t.contains("create x@acme.example")
    })
    .await;
    let _y = user("y");
    parts.salesforce.deactivate(&x).unwrap();
    let line = until_text(
        &page,
        "the remap arrives on the feed",
        "#feed li[data-action=\"remap\"]",
        |t| t.contains("x@acme.example"),
    )
    .await;
    assert!(line.starts_with("remap x@acme.example"), "{line}");
    // Once: the page follows one feed, however it got its token. A later change's line on the
    // feed marks where a repeated remap line would have been.
    parts.create_salesforce_user("later");
    until_text(&page, "a later change is on the feed", "#feed", |t| {
        t.contains("create later@acme.example")
    })
    .await;
    let remaps = page
        .find_all(Locator::Css("#feed li[data-action=\"remap\"]"))
        .await
        .unwrap();
    assert_eq!(remaps.len(), 1, "one remap, shown once");
    let outreach = parts.outreach.users();
    assert_eq!(
        outreach
            .iter()
            .filter(|u| u.email == "x@acme.example")
            .count(),
        1,
        "one Outreach user, remapped, not a second one: {outreach:?}"
    );

    // Replay from the Salesforce card's menu. A replay id that is not one is refused with the
    // reason; from latest, the plan says plainly what will not be read, and nothing is asked
    // for until Confirm.
    card_action(&page, "salesforce", "replay").await;
    click(&page, "input[name=\"replay-from\"][value=\"id\"]").await;
    page.find(Locator::Id("replay-id"))
        .await
        .unwrap()
        .send_keys("<b>zz</b>")
        .await
        .unwrap();
    click(&page, "#replay-plan").await;
    let refused = until_text(
        &page,
        "a bad replay id is refused",
        "#replay-message",
        |t| !t.is_empty(),
    )
    .await;
    assert!(refused.contains("not a hex digit"), "{refused}");
    assert!(
        refused.contains("\"<b>zz</b>\""),
        "shown as text: {refused}"
    );
    click(&page, "input[name=\"replay-from\"][value=\"latest\"]").await;
    let confirm = page.find(Locator::Id("replay-confirm")).await.unwrap();
    assert!(
        !confirm.is_displayed().await.unwrap(),
        "no Confirm before a plan"
    );
    click(&page, "#replay-plan").await;
    let plan = until_text(&page, "the plan is shown", "#replay-plan-text", |t| {
        t.contains("Then:")
    })
    .await;
    assert!(
        plan.contains("Replay from latest.")
            && plan.contains("Read again: Nothing: the stream skips to its newest position.")
            && plan.contains("Not read: Changes made between the checkpoint"),
        "{plan}"
    );
    let replays = || async {
        admin_actions(&parts)
            .await
            .into_iter()
            .filter(|a| a["action"] == "replay")
            .collect::<Vec<_>>()
    };
    assert!(replays().await.is_empty(), "a plan changes nothing");
    click(&page, "#replay-confirm").await;
    until_text(&page, "the replay is requested", "#replay-message", |t| {
        t == "Replay requested: the Salesforce stream starts again from latest."
    })
    .await;
    until_text(
        &page,
        "the replay is on the feed",
        "#feed li[data-admin-action=\"replay\"]",
        |t| t == "admin replay from latest by admin",
    )
    .await;
    let actions = replays().await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["detail"]["from"], "latest");
    assert_eq!(actions[0]["actor"], "admin");
    // The admin-action list of the page names who did each, the settings save and the
    // reconnect made on the page before the replay too.
    let listed = until_text(
        &page,
        "the replay is in the admin-action list",
        "#admin-actions",
        |t| t.contains("replay from latest"),
    )
    .await;
    for what in ["replay from latest", "settings", "reconnect salesforce"] {
        assert!(listed.contains(what), "{what} in {listed}");
    }
    let by: Vec<String> = {
        let mut by = Vec::new();
        for cell in page
            .find_all(Locator::Css("#admin-actions td.actor"))
            .await
            .unwrap()
        {
            by.push(cell.text().await.unwrap());
        }
        by
    };
    assert!(
        !by.is_empty() && by.iter().all(|name| name == "admin"),
        "{by:?}"
    );

    let screenshot = page.screenshot().await.unwrap();
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    std::fs::write(&file, &screenshot).unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot: {}", file.display());

    page.close().await.unwrap();
    drop(driver);
    running.stop().await;
}
