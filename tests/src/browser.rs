//! Headless Chromium for the browser end-to-end tests (issue 4, shared DESIGN §5).
//!
//! Chromium is Debian's `chromium` package, driven over the Chrome DevTools Protocol (CDP) by
//! the small synchronous client below: one WebSocket to the browser endpoint, page and worker
//! sessions multiplexed on it (`flatten` mode). Why not a CDP crate: chromiumoxide's
//! generated code for the whole protocol takes minutes to compile on this project's 2-core
//! machine, and the tests need a dozen methods; `tungstenite` (already in the lock file through
//! tokio-tungstenite) and `serde_json` cover them in a few hundred lines.
//!
//! Every browser test runs inside [`in_loopback_netns`]: a fresh network namespace that has
//! only `lo`, so no ICE candidate can point off the machine.
//!
//! What Chromium needs here (found by experiment on Debian's Chromium 156; the harness tests in
//! `tests/tests/browser.rs` check each point):
//! - WebRTC on loopback needs **both** `--allow-loopback-in-peer-connection` and a media
//!   permission, which `--use-fake-ui-for-media-stream` stands for: without either one there
//!   is no candidate at all in a namespace with only `lo` (ICE stays `new`). With both, host
//!   candidates are plain `127.0.0.1` (no mDNS `*.local` names, which webrtc-rs cannot
//!   resolve) even without `--disable-features=WebRtcHideLocalIpsWithMdns`; the flag is kept
//!   so that this does not hinge on how Chromium ties mDNS to the media permission.
//! - Downloads need `Browser.setDownloadBehavior` (done at launch, into a temp folder). Then
//!   `<a download>` of a Blob, and hidden-iframe navigations answered by a service worker with
//!   a streamed `Content-Disposition: attachment` response, land as files: several from one
//!   page with no prompt, also when started seconds after the last user gesture; non-ASCII
//!   names via `filename*=UTF-8''…` are kept.
//! - A service worker registers on `http://127.0.0.1:PORT` (a secure context);
//!   `navigator.serviceWorker.ready` can resolve while the worker is still `activating`.
//! - The `/usr/bin/chromium` wrapper prints `[: … unexpected operator` (its /dev/shm check
//!   meets two mounts): harmless. Chromium's crash handler daemonises out of the browser's
//!   process group, so every process Chromium starts carries a marker in its environment and
//!   is killed by pid on drop; `HOME` points into the temp dir so nothing lands in `~`.

use crate::{Event, Payload};
use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Browser tests share two cores: one at a time (each may run two Chromiums).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Run `f` on a new thread inside a new network namespace that has only `lo` (up, and no
/// route for multicast: native-peer must cope, see patches/webrtc-0.21.1-mdns-optional.patch).
///
/// Everything `f` starts (servers, peers, Chromium) and every socket it opens lives in that
/// namespace; threads spawned from `f` inherit it too. Needs root. Calls are serialised
/// within a test binary.
pub fn in_loopback_netns<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    if !crate::is_root() {
        bail!(
            "browser tests must run as root: they unshare a network namespace with only \
             loopback (DESIGN §5); run them through ./scripts/test.sh as root"
        );
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let handle = std::thread::Builder::new()
        .name("loopback-netns".into())
        .spawn(move || -> anyhow::Result<T> {
            enter_new_netns()?;
            let out = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .output()
                .context("running `ip` (package iproute2)")?;
            if !out.status.success() {
                bail!(
                    "ip link set lo up: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let links = Command::new("ip").args(["-o", "link"]).output()?;
            let links = String::from_utf8_lossy(&links.stdout);
            if links.lines().count() != 1 || !links.contains("lo:") {
                bail!("the new namespace should have only lo, has:\n{links}");
            }
            f()
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[allow(unsafe_code)]
fn enter_new_netns() -> anyhow::Result<()> {
    // SAFETY: unshare(2) takes a flag word and touches no memory of ours; CLONE_NEWNET moves
    // only the calling thread (a task of its own) into a new network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    Ok(())
}

/// Run `f` on a new thread inside the existing network namespace `ns` (made with `ip netns
/// add`, e.g. a NAT lab host). Sockets `f` opens stay in `ns` whichever thread uses them later,
/// and processes it starts run there: a [`Chromium`] launched inside is driven from outside.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("no network namespace {ns}"))?;
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> anyhow::Result<T> {
            enter_netns(&file)?;
            f()
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[allow(unsafe_code)]
fn enter_netns(file: &std::fs::File) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns(2) takes a descriptor we own for the duration of the call and a flag word;
    // it moves only the calling thread into that namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

/// Path of the Chromium binary: `PUNCHDROP_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("PUNCHDROP_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// One headless Chromium with one page, killed (with every process it started) on drop.
#[derive(Debug)]
pub struct Chromium {
    child: Child,
    marker: String,
    cdp: Cdp,
    /// Session of the page target.
    page: String,
    dir: tempfile::TempDir,
    /// Where downloads land.
    pub downloads: PathBuf,
    /// A name for diagnostics ("alice", "bob").
    pub name: String,
}

impl Chromium {
    /// The flags every instance gets (besides `--user-data-dir` and a window size).
    pub const FLAGS: &'static [&'static str] = &[
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-breakpad",
        "--allow-loopback-in-peer-connection",
        "--use-fake-ui-for-media-stream",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--remote-debugging-port=0",
    ];

    /// Chromium as a user runs it: none of the flags that change WebRTC (loopback candidates,
    /// raw host addresses instead of mDNS names, media permissions). Used where the network is
    /// real (the NAT lab). What remains: headless, no sandbox (tests run as root), no GPU,
    /// and no background traffic to Google (the lab has no internet, and that traffic would
    /// only add noise); none of these touches WebRTC. [`Chromium::secure_origin`] adds one
    /// more.
    pub const STOCK_FLAGS: &'static [&'static str] = &[
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-breakpad",
        "--remote-debugging-port=0",
    ];

    /// The flag that treats `origin` (the lab server's `http://` origin) as secure, standing in
    /// for the https a deployment has: service workers and the File System Access API need a
    /// secure context. It changes nothing in WebRTC.
    pub fn secure_origin(origin: &str) -> String {
        format!("--unsafely-treat-insecure-origin-as-secure={origin}")
    }

    /// A stock Chromium (see [`Chromium::STOCK_FLAGS`]) in network namespace `ns`, treating
    /// `origin` as secure.
    pub fn launch_stock_in(ns: &str, name: &str, origin: &str) -> anyhow::Result<Self> {
        let name = name.to_string();
        let mut flags: Vec<String> = Self::STOCK_FLAGS.iter().map(|f| f.to_string()).collect();
        flags.push(Self::secure_origin(origin));
        in_netns(ns, move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            Self::launch_with(&name, &flags)
        })
    }

    pub fn launch() -> anyhow::Result<Self> {
        Self::launch_named("chromium")
    }

    pub fn launch_named(name: &str) -> anyhow::Result<Self> {
        Self::launch_with(name, Self::FLAGS)
    }

    /// Launch with exactly these flags (experiments: see what a flag changes).
    pub fn launch_with(name: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("punchdrop-chromium-")
            .tempdir()?;
        let profile = dir.path().join("profile");
        let downloads = dir.path().join("downloads");
        std::fs::create_dir_all(&profile)?;
        std::fs::create_dir_all(&downloads)?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let marker = format!(
            "{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let mut cmd = Command::new(chromium_path());
        cmd.args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--window-size=1280,900")
            .arg("about:blank")
            // Crash reports and config stay in the temp dir, not in $HOME.
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("PUNCHDROP_CHROMIUM_MARKER", &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", chromium_path().display()))?;
        let mut partial = Launching {
            child: Some(child),
            marker: marker.clone(),
            dir: Some(dir),
        };
        let dir_path = partial.dir.as_ref().unwrap().path().to_path_buf();
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let mut lines = s.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                }
            }
            let tail = || stderr_tail(&dir_path);
            if let Some(status) = partial.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "chromium exited ({status}) before opening DevTools:\n{}",
                    tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "chromium did not write {} within 30 s:\n{}",
                    port_file.display(),
                    tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cdp = Cdp::connect(&ws_url)?;
        // From here on Chromium's Drop cleans up.
        let mut c = Chromium {
            child: partial.child.take().unwrap(),
            marker,
            cdp,
            page: String::new(),
            dir: partial.dir.take().unwrap(),
            downloads,
            name: name.to_string(),
        };
        c.init()
            .with_context(|| format!("{name}: {}", c.stderr_tail()))?;
        Ok(c)
    }

    fn init(&mut self) -> anyhow::Result<()> {
        let cdp = &mut self.cdp;
        cdp.call(None, "Target.setDiscoverTargets", json!({"discover": true}))?;
        let targets = cdp.call(None, "Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .map(|t| t["targetId"].as_str().unwrap_or_default().to_string());
        let target = match page {
            Some(t) => t,
            None => {
                cdp.call(None, "Target.createTarget", json!({"url": "about:blank"}))?["targetId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        let session = cdp.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )?["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId attaching to the page"))?
            .to_string();
        cdp.labels.insert(session.clone(), "page".into());
        let s = Some(session.as_str());
        for domain in ["Runtime.enable", "Page.enable", "Log.enable", "DOM.enable"] {
            cdp.call(s, domain, json!({}))?;
        }
        // Dedicated workers and out-of-process frames of the page report their console too.
        cdp.call(
            s,
            "Target.setAutoAttach",
            json!({"autoAttach": true, "waitForDebuggerOnStart": false, "flatten": true}),
        )?;
        cdp.call(
            None,
            "Browser.setDownloadBehavior",
            json!({
                "behavior": "allow",
                "downloadPath": self.downloads.display().to_string(),
                "eventsEnabled": true,
            }),
        )?;
        self.page = session;
        Ok(())
    }

    /// The browser process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Navigate and wait until the document has loaded.
    /// A Chromium just launched in a lab namespace may still see that namespace's network
    /// settle and abort its first navigation with `net::ERR_NETWORK_CHANGED` (seen once in
    /// CI-like runs): that one error is retried, once, after a moment.
    pub fn goto(&mut self, url: &str) -> anyhow::Result<()> {
        let mut r = self.navigate(url)?;
        if r["errorText"].as_str() == Some("net::ERR_NETWORK_CHANGED") {
            std::thread::sleep(Duration::from_millis(500));
            r = self.navigate(url)?;
        }
        if let Some(e) = r["errorText"].as_str() {
            bail!("{}: navigating to {url}: {e}", self.name);
        }
        self.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            Duration::from_secs(30),
        )
        .with_context(|| format!("loading {url}"))?;
        Ok(())
    }

    fn navigate(&mut self, url: &str) -> anyhow::Result<Value> {
        self.cdp.call(
            Some(&self.page.clone()),
            "Page.navigate",
            json!({"url": url}),
        )
    }

    /// Evaluate `js` in the page (promises awaited, result by value, as a user gesture).
    /// A thrown exception is an error carrying its message.
    pub fn eval(&mut self, js: &str) -> anyhow::Result<Value> {
        self.eval_timeout(js, Duration::from_secs(60))
    }

    pub fn eval_timeout(&mut self, js: &str, timeout: Duration) -> anyhow::Result<Value> {
        let page = self.page.clone();
        let r = self.cdp.call_timeout(
            Some(&page),
            "Runtime.evaluate",
            json!({
                "expression": js,
                "awaitPromise": true,
                "returnByValue": true,
                "userGesture": true,
                "timeout": timeout.as_millis() as u64,
            }),
            timeout + Duration::from_secs(5),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let msg = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["exception"]["value"].as_str())
                .or_else(|| ex["text"].as_str())
                .unwrap_or("exception");
            bail!(
                "{}: JS exception: {msg}\n  in: {}",
                self.name,
                short(js, 300)
            );
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Poll `js` every 100 ms until it is truthy; returns that value. On timeout the error
    /// carries the page's state, `window.punchdropEvents`, console output and exceptions.
    pub fn wait_for(&mut self, js: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.eval_timeout(js, Duration::from_secs(10)) {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => last = v.to_string(),
                Err(e) => last = format!("error: {e:#}"),
            }
            if Instant::now() > deadline {
                let (name, diag) = (self.name.clone(), self.diagnostics());
                bail!(
                    "{}: timed out after {timeout:?} waiting for `{}` (last: {})\n{}",
                    name,
                    short(js, 300),
                    short(&last, 500),
                    diag
                );
            }
            self.cdp.pump(Duration::from_millis(100))?;
        }
    }

    /// Wait for `document.body.dataset.state == state`; fails at once (with diagnostics) if
    /// the page reaches `error` instead (unless that is what we wait for).
    pub fn wait_state(&mut self, state: &str, timeout: Duration) -> anyhow::Result<()> {
        let js = format!(
            "(() => {{ const s = document.body && document.body.dataset.state; \
              return (s === {st} || (s === 'error' && {st} !== 'error')) ? s : null; }})()",
            st = Value::from(state)
        );
        let got = self.wait_for(&js, timeout)?;
        if got != state {
            let (name, diag) = (self.name.clone(), self.diagnostics());
            bail!(
                "{}: page went to state {got} while waiting for {state:?}\n{}",
                name,
                diag
            );
        }
        Ok(())
    }

    /// `document.body.dataset.state`.
    pub fn state(&mut self) -> anyhow::Result<String> {
        Ok(self
            .eval("document.body ? (document.body.dataset.state || '') : ''")?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// A copy of `window.punchdropEvents`, each one of the events the README lists.
    pub fn events(&mut self) -> anyhow::Result<Vec<Event>> {
        let v = self.eval("window.punchdropEvents || []")?;
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                serde_json::from_value(e.clone()).with_context(|| {
                    format!("the page reported something that is not an event: {e}")
                })
            })
            .collect()
    }

    /// Wait for the first page event of kind `T`. An `error` event fails the wait at once.
    pub fn wait<T: Payload + Clone>(&mut self, timeout: Duration) -> anyhow::Result<T> {
        let js = format!(
            "(() => {{ const e = window.punchdropEvents || []; \
              return e.find(x => x.event === {n}) || e.find(x => x.event === 'error') || null; }})()",
            n = Value::from(T::NAME)
        );
        let v = self.wait_for(&js, timeout)?;
        let ev: Event = serde_json::from_value(v.clone())
            .with_context(|| format!("the page reported something that is not an event: {v}"))?;
        match T::of(&ev) {
            Some(p) => Ok(p.clone()),
            None => {
                let (name, diag) = (self.name.clone(), self.diagnostics());
                bail!(
                    "{name}: page reported an error while waiting for {}: {v}\n{diag}",
                    T::NAME
                )
            }
        }
    }

    /// Choose files on an `<input type=file>` (as a user would); checks that `change` fired.
    pub fn set_files(&mut self, selector: &str, files: &[&Path]) -> anyhow::Result<()> {
        let sel = Value::from(selector);
        self.eval(&format!(
            "(() => {{ const el = document.querySelector({sel}); \
              if (!el) throw new Error('no element ' + {sel}); \
              window.__pdChanges = window.__pdChanges || {{}}; window.__pdChanges[{sel}] = 0; \
              el.addEventListener('change', () => window.__pdChanges[{sel}]++, {{once: true}}); \
              return true; }})()"
        ))?;
        let page = self.page.clone();
        let doc = self
            .cdp
            .call(Some(&page), "DOM.getDocument", json!({"depth": 0}))?;
        let node = self.cdp.call(
            Some(&page),
            "DOM.querySelector",
            json!({"nodeId": doc["root"]["nodeId"], "selector": selector}),
        )?["nodeId"]
            .clone();
        if node == 0 || node.is_null() {
            bail!("{}: no element {selector}", self.name);
        }
        let paths = files
            .iter()
            .map(|p| {
                std::fs::canonicalize(p)
                    .map(|p| p.display().to_string())
                    .with_context(|| p.display().to_string())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.cdp.call(
            Some(&page),
            "DOM.setFileInputFiles",
            json!({"files": paths, "nodeId": node}),
        )?;
        self.wait_for(
            &format!("window.__pdChanges && window.__pdChanges[{sel}] > 0"),
            Duration::from_secs(5),
        )
        .context("no change event after setting files")?;
        Ok(())
    }

    /// Click the element's centre with real mouse events (a user gesture). Fails if it is
    /// missing, disabled, has no size or is covered by another element.
    pub fn click(&mut self, selector: &str) -> anyhow::Result<()> {
        let sel = Value::from(selector);
        let at = self.eval(&format!(
            "(async () => {{ const el = document.querySelector({sel}); \
              if (!el) throw new Error('no element ' + {sel}); \
              if (el.disabled) throw new Error({sel} + ' is disabled'); \
              el.scrollIntoView({{block: 'center', inline: 'center'}}); \
              await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))); \
              const r = el.getBoundingClientRect(); \
              if (r.width === 0 || r.height === 0) throw new Error({sel} + ' is not visible'); \
              const x = r.left + r.width / 2, y = r.top + r.height / 2; \
              const hit = document.elementFromPoint(x, y); \
              if (hit !== el && !el.contains(hit)) \
                throw new Error({sel} + ' is covered by ' + (hit ? hit.outerHTML.slice(0, 120) : 'nothing')); \
              return [x, y]; }})()"
        ))?;
        let (x, y) = (at[0].as_f64().unwrap_or(0.0), at[1].as_f64().unwrap_or(0.0));
        let page = self.page.clone();
        for kind in ["mousePressed", "mouseReleased"] {
            self.cdp.call(
                Some(&page),
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )?;
        }
        Ok(())
    }

    /// PNG of the page in a 1280×800 desktop viewport.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        self.capture(path, 1280, 800, 1, false)
    }

    /// PNG as a phone would show the page (390×844 CSS pixels, 2× density, mobile).
    pub fn screenshot_phone(&mut self, path: &Path) -> anyhow::Result<()> {
        self.capture(path, 390, 844, 2, true)
    }

    fn capture(
        &mut self,
        path: &Path,
        width: u32,
        height: u32,
        scale: u32,
        mobile: bool,
    ) -> anyhow::Result<()> {
        self.page_call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile}),
        )?;
        let shot = self
            .eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            .and_then(|_| self.page_call("Page.captureScreenshot", json!({"format": "png"})));
        self.page_call("Emulation.clearDeviceMetricsOverride", json!({}))?;
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot?["data"].as_str().unwrap_or_default())
            .context("screenshot data")?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Desktop and phone screenshots as `DIR/NAME-desktop.png` and `DIR/NAME-phone.png`;
    /// prints and returns the paths.
    pub fn screenshots(&mut self, dir: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
        let desktop = dir.join(format!("{name}-desktop.png"));
        let phone = dir.join(format!("{name}-phone.png"));
        self.screenshot(&desktop)?;
        self.screenshot_phone(&phone)?;
        for p in [&desktop, &phone] {
            println!("screenshot: {}", p.display());
        }
        Ok(vec![desktop, phone])
    }

    /// Wait until `downloads/NAME` is complete: present with `size` bytes, no `.crdownload`.
    pub fn wait_download(
        &mut self,
        name: &str,
        size: u64,
        timeout: Duration,
    ) -> anyhow::Result<PathBuf> {
        let path = self.downloads.join(name);
        let partial = self.downloads.join(format!("{name}.crdownload"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(m) = std::fs::metadata(&path)
                && m.len() == size
                && !partial.exists()
            {
                return Ok(path);
            }
            if Instant::now() > deadline {
                let (name, diag) = (self.name.clone(), self.diagnostics());
                bail!(
                    "{}: no complete download {name} ({size} bytes) within {timeout:?}\n{}",
                    name,
                    diag
                );
            }
            self.cdp.pump(Duration::from_millis(100))?;
        }
    }

    /// Any CDP command on the page's session.
    pub fn page_call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let page = self.page.clone();
        self.cdp.call(Some(&page), method, params)
    }

    /// The page's JS memory in bytes: used V8 heap plus ArrayBuffer backing stores (which
    /// hold typed arrays and the wasm memory, outside the V8 heap).
    pub fn js_heap_used(&mut self) -> anyhow::Result<u64> {
        let r = self.page_call("Runtime.getHeapUsage", json!({}))?;
        let n = |k: &str| r[k].as_f64().unwrap_or(0.0) as u64;
        Ok(n("usedSize") + n("backingStorageSize"))
    }

    /// Resident memory of every process of this Chromium (browser, GPU, network, renderers),
    /// in bytes. Blob data, for one, lives in the browser process, not the renderer.
    pub fn total_rss(&self) -> u64 {
        let pid = self.child.id();
        descendants(pid).into_iter().chain([pid]).map(rss_of).sum()
    }

    /// Bytes stored in the profile folder (where large Blobs spill to disk).
    pub fn profile_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir.path().join("profile"))
    }

    /// Resident memory of this browser's renderer processes (all of them: page, service
    /// worker if separate, spare), in bytes.
    pub fn renderer_rss(&self) -> u64 {
        descendants(self.child.id())
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    // Zygote children rewrite their command line as one string.
                    .map(|c| c.windows(15).any(|w| w == b"--type=renderer"))
                    .unwrap_or(false)
            })
            .map(rss_of)
            .sum()
    }

    /// Console messages, exceptions and log entries seen so far.
    pub fn console(&mut self) -> Vec<String> {
        let _ = self.cdp.pump(Duration::ZERO);
        self.cdp.log.clone()
    }

    /// The last lines Chromium wrote to stderr (minus D-Bus noise).
    pub fn stderr_tail(&self) -> String {
        stderr_tail(self.dir.path())
    }

    /// Everything that helps tell why a page did not do what a test waited for.
    pub fn diagnostics(&mut self) -> String {
        let probe = self.eval_timeout(
            "(() => ({url: location.href, \
               state: document.body ? document.body.dataset.state : null, \
               error: (document.querySelector('#error') || {}).textContent || null, \
               events: window.punchdropEvents === undefined ? 'window.punchdropEvents is undefined' \
                 : (() => { const e = window.punchdropEvents, p = e.filter(x => x.event === 'progress'); \
                     return {count: e.length, progress_events: p.length, last_progress: p[p.length - 1] || null, \
                             other: e.filter(x => x.event !== 'progress').slice(-40)}; })()}))()",
            Duration::from_secs(5),
        );
        let _ = self.cdp.pump(Duration::from_millis(50));
        let mut s = format!("--- {} diagnostics ---\n", self.name);
        match probe {
            Ok(v) => {
                s += &format!(
                    "page: {}\n",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                )
            }
            Err(e) => s += &format!("page: cannot evaluate: {e:#}\n"),
        }
        let log = &self.cdp.log;
        s += &format!("console ({} entries, last 80):\n", log.len());
        for l in log.iter().skip(log.len().saturating_sub(80)) {
            s += "  ";
            s += &short(l, 600);
            s += "\n";
        }
        s += "downloads folder:\n";
        if let Ok(rd) = std::fs::read_dir(&self.downloads) {
            for e in rd.flatten() {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                s += &format!("  {} ({len} bytes)\n", e.file_name().to_string_lossy());
            }
        }
        if !self.cdp.downloads.is_empty() {
            s += "download events (last 10):\n";
            for d in self
                .cdp
                .downloads
                .iter()
                .skip(self.cdp.downloads.len().saturating_sub(10))
            {
                s += &format!("  {d}\n");
            }
        }
        s += "chromium stderr (tail):\n";
        s += &self.stderr_tail();
        s
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_marked(&self.marker);
    }
}

/// Owns a starting Chromium until the CDP connection exists, so early errors kill it.
struct Launching {
    child: Option<Child>,
    marker: String,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Launching {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            kill_marked(&self.marker);
        }
    }
}

fn stderr_tail(dir: &Path) -> String {
    let s = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = s
        .lines()
        .filter(|l| !l.contains("dbus") && !l.trim().is_empty())
        .collect();
    let mut out = String::new();
    for l in lines.iter().skip(lines.len().saturating_sub(25)) {
        out += "  ";
        out += &short(l, 400);
        out += "\n";
    }
    out
}

/// SIGKILL every process whose environment carries `PUNCHDROP_CHROMIUM_MARKER=marker`: the
/// processes one Chromium started, including the crash handler that leaves its group.
fn kill_marked(marker: &str) {
    let needle = format!("PUNCHDROP_CHROMIUM_MARKER={marker}");
    let mut pids = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
                && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
            {
                pids.push(pid.to_string());
            }
        }
    }
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
}

/// All descendants of `pid` (by /proc parent links).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
                // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
                && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
                && let Some(pp) = rest.split_whitespace().nth(1)
                && let Ok(pp) = pp.parse::<u32>()
            {
                parent.insert(p, pp);
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&c, &pp) in &parent {
            if pp == p {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// A synchronous CDP connection: commands wait for their response; events that arrive
/// meanwhile are recorded (console, exceptions, downloads) or acted on (attach to workers).
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    /// Session id → what it is ("page", "service_worker https://…").
    labels: HashMap<String, String>,
    log: Vec<String>,
    downloads: Vec<Value>,
    /// Targets with a session of ours.
    attached: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Cdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cdp")
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl Cdp {
    fn connect(url: &str) -> anyhow::Result<Self> {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let stream = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _) = tungstenite::client::client_with_config(url, stream, Some(config))
            .map_err(|e| anyhow!("CDP WebSocket handshake with {url}: {e}"))?;
        Ok(Self {
            ws,
            next_id: 0,
            labels: HashMap::new(),
            log: Vec::new(),
            downloads: Vec::new(),
            attached: Default::default(),
        })
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> anyhow::Result<u64> {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .with_context(|| format!("CDP send {method}"))?;
        Ok(self.next_id)
    }

    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        self.call_timeout(session, method, params, Duration::from_secs(30))
    }

    fn call_timeout(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = self.send(session, method, params)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("CDP {method}: no answer within {timeout:?}");
            }
            let Some(msg) = self.read(left)? else {
                continue;
            };
            if msg["id"] == id {
                if let Some(e) = msg.get("error") {
                    bail!("CDP {method}: {e}");
                }
                return Ok(msg["result"].clone());
            }
            self.handle(msg)?;
        }
    }

    /// Handle events for `wait` (at least one read attempt).
    fn pump(&mut self, wait: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left.max(Duration::from_millis(1)))? {
                Some(msg) => self.handle(msg)?,
                None => return Ok(()),
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// One message, or `None` when nothing arrived within `wait`.
    fn read(&mut self, wait: Duration) -> anyhow::Result<Option<Value>> {
        self.ws
            .get_mut()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.ws.read() {
            Ok(tungstenite::Message::Text(t)) => Ok(Some(serde_json::from_str(t.as_str())?)),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(anyhow!("CDP connection: {e} (did Chromium die?)")),
        }
    }

    fn handle(&mut self, msg: Value) -> anyhow::Result<()> {
        let Some(method) = msg["method"].as_str() else {
            return Ok(()); // an answer nobody waits for
        };
        let p = &msg["params"];
        let who = msg["sessionId"]
            .as_str()
            .and_then(|s| self.labels.get(s))
            .cloned()
            .unwrap_or_else(|| "browser".into());
        match method {
            "Runtime.consoleAPICalled" => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(remote_object_text)
                    .collect();
                self.log.push(format!(
                    "[{who} console.{}] {}",
                    p["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                ));
            }
            "Runtime.exceptionThrown" => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or_else(|| d["text"].as_str())
                    .unwrap_or("?");
                self.log.push(format!(
                    "[{who} uncaught exception] {text} ({}:{})",
                    d["url"].as_str().unwrap_or(""),
                    d["lineNumber"]
                ));
            }
            "Log.entryAdded" => {
                let e = &p["entry"];
                self.log.push(format!(
                    "[{who} log.{}] {} {}",
                    e["level"].as_str().unwrap_or(""),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                ));
            }
            "Inspector.targetCrashed" => self.log.push(format!("[{who}] RENDERER CRASHED")),
            "Target.targetCreated" => {
                let t = &p["targetInfo"];
                let kind = t["type"].as_str().unwrap_or("");
                if matches!(kind, "service_worker" | "shared_worker") {
                    self.send(
                        None,
                        "Target.attachToTarget",
                        json!({"targetId": t["targetId"], "flatten": true}),
                    )?;
                }
            }
            "Target.attachedToTarget" => {
                let t = &p["targetInfo"];
                let target = t["targetId"].as_str().unwrap_or_default().to_string();
                if let Some(s) = p["sessionId"].as_str()
                    && t["type"] != "page"
                    && !self.labels.contains_key(s)
                {
                    // Auto-attach (through the page) and our own attach (on discovery) can
                    // both reach a worker: keep one session per target.
                    if !self.attached.insert(target) {
                        self.send(None, "Target.detachFromTarget", json!({"sessionId": s}))?;
                        return Ok(());
                    }
                    let label = format!(
                        "{} {}",
                        t["type"].as_str().unwrap_or("target"),
                        t["url"].as_str().unwrap_or("")
                    );
                    self.labels.insert(s.to_string(), label);
                    self.send(Some(s), "Runtime.enable", json!({}))?;
                    self.send(Some(s), "Runtime.runIfWaitingForDebugger", json!({}))?;
                }
            }
            "Target.targetCrashed" => self.log.push(format!(
                "[browser] target crashed: {} (status {}, code {})",
                p["targetId"], p["status"], p["errorCode"]
            )),
            "Browser.downloadWillBegin" => {
                self.downloads.push(json!({"event": method, "params": p}));
            }
            "Browser.downloadProgress" if p["state"] != "inProgress" => {
                self.downloads.push(json!({"event": method, "params": p}));
            }
            _ => {}
        }
        Ok(())
    }
}

fn remote_object_text(o: &Value) -> String {
    match o.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => o["description"]
            .as_str()
            .or_else(|| o["unserializableValue"].as_str())
            .or_else(|| o["type"].as_str())
            .unwrap_or("?")
            .to_string(),
    }
}

/// A tiny HTTP/1.0 server on `127.0.0.1:0` serving fixed files, for harness experiments.
#[derive(Debug)]
pub struct StaticServer {
    pub url: String,
}

impl StaticServer {
    /// `files`: (path, content type, body). Lives as long as the process (or namespace).
    pub fn start(files: Vec<(String, String, Vec<u8>)>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let files: std::sync::Arc<HashMap<String, (String, Vec<u8>)>> =
            std::sync::Arc::new(files.into_iter().map(|(p, t, b)| (p, (t, b))).collect());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let files = files.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &files);
                });
            }
        });
        Ok(Self { url })
    }
}

fn serve_one(conn: TcpStream, files: &HashMap<String, (String, Vec<u8>)>) -> anyhow::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_string();
    let mut conn = conn;
    match files.get(&path) {
        Some((ctype, body)) => {
            write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(body)?;
        }
        None => {
            conn.write_all(
                b"HTTP/1.0 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
            )?;
        }
    }
    let _ = conn.flush();
    let mut rest = Vec::new();
    let _ = conn.set_read_timeout(Some(Duration::from_millis(10)));
    let _ = reader.read_to_end(&mut rest);
    Ok(())
}
