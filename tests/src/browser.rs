//! Headless Chromium over WebDriver for the console's browser test and
//! screenshots: chromedriver runs as a child process on a free port, and
//! `fantoccini` drives it. Without Debian's `chromium` and `chromium-driver`
//! packages the caller skips (or, under `CI=true`, fails).
use fantoccini::{Client, ClientBuilder};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long chromedriver may take to listen.
const DRIVER_START: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// chromedriver's process group: it and every Chromium it started
    group: Option<i32>,
}

impl Drop for Browser {
    /// A failed test never reaches `close`: end chromedriver and its
    /// Chromium processes by their group, so none outlives the test. The
    /// group is signalled by killpg(2) directly, never through a shell's
    /// `kill -KILL -PID`: procps reads that as kill(-1), every process.
    fn drop(&mut self) {
        if let Some(pgid) = self
            .group
            .take()
            .filter(|g| *g > 1)
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Why there is no browser here, or the two programs.
pub fn programs() -> Result<(PathBuf, PathBuf), String> {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| on_path(n));
    match (chromium, on_path("chromedriver")) {
        (Some(c), Some(d)) => Ok((c, d)),
        _ => Err(
            "the console's browser test needs headless Chromium and chromedriver: \
             apt-get install chromium chromium-driver"
                .into(),
        ),
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `Ok(None)`
    /// (with a message) when the programs are missing outside CI.
    pub async fn start() -> anyhow::Result<Option<Self>> {
        let (chromium, driver_bin) = match programs() {
            Ok(p) => p,
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
                anyhow::bail!("{why} (CI=true: a missing browser fails the test)")
            }
            Err(why) => {
                eprintln!("skipped: {why}");
                return Ok(None);
            }
        };
        let port = crate::ports::bind_restartable([127, 0, 0, 1].into())
            .local_addr()?
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // its own process group, so Drop can end Chromium with it
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let group = driver.id().and_then(|id| i32::try_from(id).ok());
        let url = format!("http://127.0.0.1:{port}");
        let end = tokio::time::Instant::now() + DRIVER_START;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < end,
                "chromedriver did not listen on {url} within {DRIVER_START:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                // as root Chromium needs --no-sandbox; /dev/shm is small in containers
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,900"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await?;
        Ok(Some(Self {
            client,
            driver,
            group,
        }))
    }

    /// Ends the browser session (Chromium quits) and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        // Drop ends whatever of the group is left
    }
}

/// How long a page may take to show what a step waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(15);

impl Browser {
    /// Logs in at `base` (the node's console URL, no trailing slash) with
    /// `token` and waits for the dashboard.
    pub async fn login(&self, base: &str, token: &str) -> anyhow::Result<()> {
        use fantoccini::Locator;
        self.client.goto(&format!("{base}/")).await?;
        // not logged in: the console sends the browser to /login
        let field = self
            .client
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Id("token"))
            .await?;
        field.send_keys(token).await?;
        self.client
            .form(Locator::Css("form[action='/login']"))
            .await?
            .submit()
            .await?;
        if let Err(e) = self
            .client
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css("#health"))
            .await
        {
            let page = self.client.source().await.unwrap_or_default();
            anyhow::bail!("no dashboard after logging in ({e}); the page: {page}");
        }
        Ok(())
    }

    /// Runs `script` (an async function body that ends with
    /// `return value`) in the page and waits for its value.
    pub async fn run(&self, script: &str) -> anyhow::Result<serde_json::Value> {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1];\
             (async () => {{ {script} }})().then(done, e => done({{ error: String(e) }}));"
        );
        Ok(self.client.execute_async(&wrapped, vec![]).await?)
    }

    /// A PNG of the whole window.
    pub async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let png = self.client.screenshot().await?;
        std::fs::write(path, png)?;
        Ok(())
    }
}
