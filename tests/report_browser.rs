//! The HTML load-test report in a real browser: headless Chromium loads the example report from
//! a file, and the DOM it ends up with must hold every chart, drawn; the console must stay free
//! of errors (a blocked fetch or a parse problem would show there); a screenshot must show more
//! than a blank page.
//!
//! Needs Debian's `chromium` (CI installs it). Without it these tests fail: a report nobody
//! opened in a browser is not tested.
//!
//! `SWITCHYARD_REPORT_SCREENSHOT=/tmp/example.png cargo test --test report_browser` keeps a
//! screenshot of the example report (the README's is of a real demo run: docs/loadtest-demo.png).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard::loadtest::{html, report::Report};

const CHARTS: [&str; 5] = ["share", "ttft", "errors", "replicas", "cdf"];

/// `chromium`, else `chromium-browser`, from PATH.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no Chromium found on PATH (looked for `chromium`, then `chromium-browser`). These \
         tests open the HTML report in a real browser: install Debian's `chromium` package \
         (`apt-get install -y chromium`; CI installs it)."
    );
}

/// A fresh directory for one test's page, browser profile and screenshot.
fn scratch(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "switchyard-report-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn write_example(dir: &Path) -> PathBuf {
    let page = dir.join("report.html");
    std::fs::write(&page, html::render(&Report::example())).expect("write report");
    page
}

struct Run {
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium on the page with `extra` arguments, with its own profile directory
/// (parallel tests must not share one) and a deadline (a hung browser fails, not hangs, CI).
fn run_chromium(dir: &Path, page: &Path, extra: &[String]) -> Run {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let profile = dir.join(format!("profile-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        "--no-first-run",
        "--disable-extensions",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start chromium");
    // Drain both pipes while waiting: the dumped DOM is larger than a pipe's buffer.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s ({extra:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_reader
        .join()
        .expect("stdout reader")
        .expect("read stdout");
    let stderr = err_reader
        .join()
        .expect("stderr reader")
        .expect("read stderr");
    assert!(
        status.success(),
        "chromium failed ({status}) with {extra:?}; stderr:\n{stderr}"
    );
    Run { stdout, stderr }
}

/// Console messages and uncaught exceptions, as Chromium logs them to stderr. Any console
/// message counts: Chromium logs `console.error` as `INFO:CONSOLE:1] "..."` (the level is not
/// in the line), and the report has no scripts, so nothing should reach the console at all.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

/// The markup of `<figure data-chart="name">` in the serialized DOM.
fn figure<'a>(dom: &'a str, name: &str) -> &'a str {
    let open = format!("<figure data-chart=\"{name}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("the DOM has no {open}>"));
    let len = dom[start..]
        .find("</figure>")
        .unwrap_or_else(|| panic!("figure {name} never closes"));
    &dom[start..start + len]
}

/// The console check above sees what this Chromium logs; otherwise it would pass vacuously.
#[test]
fn browser_console_check_sees_errors() {
    let dir = scratch("console");
    let page = dir.join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><p>x</p><script>console.error('boom');</script>\
         <script>throw new Error('bad');</script>",
    )
    .expect("write page");
    let run = run_chromium(&dir, &page, &["--dump-dom".to_string()]);
    let errors = console_errors(&run.stderr);
    assert!(
        errors.iter().any(|l| l.contains("boom")),
        "console.error not seen in chromium's stderr:\n{}",
        run.stderr
    );
    assert!(
        errors.iter().any(|l| l.contains("Uncaught")),
        "uncaught exception not seen in chromium's stderr:\n{}",
        run.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn browser_dom_has_every_chart_drawn() {
    let dir = scratch("dom");
    let page = write_example(&dir);
    let run = run_chromium(&dir, &page, &["--dump-dom".to_string()]);
    let dom = &run.stdout;

    assert!(dom.contains("<table id=\"summary\">"), "summary table");
    assert!(dom.contains("<table id=\"steps\">"), "steps table");
    assert!(dom.contains("<table id=\"events\">"), "events table");
    for name in CHARTS {
        let fig = figure(dom, name);
        assert!(fig.contains("<figcaption>"), "{name}: no caption");
        assert!(fig.contains("<svg"), "{name}: no <svg> in the loaded DOM");
        let strokes = fig.matches("<polyline").count() + fig.matches("<path").count();
        assert!(strokes > 0, "{name}: the chart has no lines:\n{fig}");
        assert!(!fig.contains("nodata"), "{name}: says no data");
    }
    let errors = console_errors(&run.stderr);
    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn browser_screenshot_is_not_blank() {
    let dir = scratch("png");
    let page = write_example(&dir);
    let png = dir.join("report.png");
    let run = run_chromium(
        &dir,
        &page,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,2400".to_string(),
            "--hide-scrollbars".to_string(),
        ],
    );
    let errors = console_errors(&run.stderr);
    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));

    let bytes = std::fs::read(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{}", png.display(), run.stderr));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR holds the size: the window asked for.
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    assert_eq!((be(16), be(20)), (1280, 2400), "screenshot size");
    // A blank page compresses to a few hundred bytes; charts and tables do not.
    assert!(
        bytes.len() > 10 * 1024,
        "screenshot is only {} bytes: nothing drawn?",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("SWITCHYARD_REPORT_SCREENSHOT") {
        // Cut to the example page's height (no blank band below it).
        run_chromium(
            &dir,
            &page,
            &[
                format!("--screenshot={}", PathBuf::from(keep).display()),
                "--window-size=1280,1900".to_string(),
                "--hide-scrollbars".to_string(),
            ],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
