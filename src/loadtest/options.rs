//! `switchyard loadtest` flags, and their validation into [`Options`]: every bad value is
//! refused with the flag's name before any request is sent.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::report::{RunConfig, Slo};

#[derive(Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// Where to send the requests.
    #[arg(default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Open loop: requests per second, arriving as a Poisson process (see --burstiness).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Gamma arrivals with this shape (1 = Poisson, below 1 = burstier, above = steadier).
    #[arg(long, requires = "rate")]
    pub burstiness: Option<f64>,
    /// Closed loop: this many clients, each sending its next request when the last ended
    /// [default: 8 when --rate is not given].
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Seconds of measured load [default: 30, or until the promotion ends with --promote].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many measured requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of load before measuring starts (and before --promote).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seed of every random choice (arrivals, lengths, stream or not).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// At most this many requests in flight; open-loop arrivals beyond it wait.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: u32,
    /// Seconds a request may take, from sending to the end of its body.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Speak HTTP/2 (prior knowledge, h2c) over one connection instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    pub http2: bool,
    /// Chat completions: `true`, `false` or `mix` (half and half).
    #[arg(long, default_value = "true")]
    pub stream: String,
    /// `max_tokens` of each chat request: `N` or a uniform range `A..B`.
    #[arg(long, default_value = "16..64")]
    pub max_tokens: String,
    /// Words in each chat prompt: `N` or `A..B`.
    #[arg(long, default_value = "8..64")]
    pub prompt_words: String,
    /// Request path [default: /v1/chat/completions; with --get: /].
    #[arg(long)]
    pub path: Option<String>,
    /// POST this JSON file as every request's body instead of a chat completion.
    #[arg(long, conflicts_with = "get")]
    pub body_file: Option<PathBuf>,
    /// Plain GET requests.
    #[arg(long)]
    pub get: bool,
    /// The response header naming the deployment that answered.
    #[arg(long, default_value = "x-switchyard-deployment")]
    pub version_header: String,
    /// Follow the rollout on this admin listener (needs SWITCHYARD_API_KEY).
    #[arg(long, env = "SWITCHYARD_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Model id [default: the only one].
    #[arg(long)]
    pub model: Option<String>,
    /// Environment [default: the only one, else production].
    #[arg(long)]
    pub environment: Option<String>,
    /// Promote this deployment after the warm-up; the test ends when the promotion does.
    #[arg(long)]
    pub promote: Option<String>,
    /// Seconds of load after the promotion ended.
    #[arg(long, default_value_t = 5.0)]
    pub cooldown: f64,
    /// Goodput objectives, e.g. `ttft=500ms,tpot=50ms,e2el=10s`.
    #[arg(long)]
    pub slo: Option<String>,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Exit 1 when more than this percent of requests failed.
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Exit 1 when more streams than this broke.
    #[arg(long)]
    pub max_broken_streams: Option<u64>,
    /// Exit 1 when fewer than this percent of requests met every SLO (needs --slo).
    #[arg(long, requires = "slo")]
    pub min_goodput_percent: Option<f64>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// Stream or not, per chat request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamChoice {
    Always,
    Never,
    Mix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Chat {
        stream: StreamChoice,
        max_tokens: (u32, u32),
        prompt_words: (u32, u32),
    },
    /// POST of a fixed JSON body.
    Json(bytes::Bytes),
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Open { rate: f64, burstiness: f64 },
    Closed { concurrency: u32 },
}

/// Validated options.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: http::Uri,
    /// `host:port` to connect to.
    pub authority: String,
    pub load: Load,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub seed: u64,
    pub max_in_flight: u32,
    pub timeout: Duration,
    pub http2: bool,
    pub shape: Shape,
    pub path: String,
    /// Built once: the request line's target, and the absolute form HTTP/2 needs.
    pub origin_uri: http::Uri,
    pub absolute_uri: http::Uri,
    pub host_header: http::HeaderValue,
    pub version_header: http::HeaderName,
    pub admin_url: Option<String>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub environment: Option<String>,
    pub promote: Option<String>,
    pub cooldown: Duration,
    pub slo: Slo,
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub max_error_rate: Option<f64>,
    pub max_broken_streams: Option<u64>,
    pub min_goodput_percent: Option<f64>,
    pub quiet: bool,
}

fn seconds(flag: &str, v: f64, min: f64) -> Result<Duration, String> {
    if !v.is_finite() || v < min || v > 86_400.0 {
        return Err(format!(
            "--{flag} {v}: must be between {min} and 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `N` or `A..B` (inclusive), each at least 1.
fn range(flag: &str, s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--{flag} {s:?}: expected a number or a range like 16..256");
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (a.trim(), b.trim().trim_start_matches('=')),
        None => (s.trim(), s.trim()),
    };
    let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 || b < a || b > 1_000_000 {
        return Err(format!("--{flag} {s:?}: needs 1 <= A <= B <= 1000000"));
    }
    Ok((a, b))
}

/// `ttft=500ms,tpot=50ms,e2el=10s`.
pub fn parse_slo(s: &str) -> Result<Slo, String> {
    let mut slo = Slo::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("--slo {part:?}: expected NAME=DURATION, e.g. ttft=500ms"))?;
        let d = humantime::parse_duration(v.trim())
            .map_err(|e| format!("--slo {part:?}: {e} (e.g. 500ms, 2s)"))?;
        let ms = Some(d.as_secs_f64() * 1000.0);
        match k.trim() {
            "ttft" => slo.ttft_ms = ms,
            "tpot" => slo.tpot_ms = ms,
            "e2el" => slo.e2el_ms = ms,
            other => {
                return Err(format!(
                    "--slo: unknown objective {other:?} (ttft, tpot or e2el)"
                ))
            }
        }
    }
    Ok(slo)
}

impl Options {
    pub fn from_args(a: &LoadtestArgs, api_key: Option<String>) -> Result<Options, String> {
        let target: http::Uri = a
            .target
            .parse()
            .map_err(|e| format!("target {:?} is not a URL: {e}", a.target))?;
        if target.scheme_str() != Some("http") {
            return Err(format!(
                "target {:?}: only http:// targets are supported",
                a.target
            ));
        }
        let host = target
            .host()
            .ok_or_else(|| format!("target {:?} has no host", a.target))?;
        let authority = format!("{host}:{}", target.port_u16().unwrap_or(80));
        let load = match (a.rate, a.concurrency) {
            (Some(rate), _) => {
                if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                    return Err(format!(
                        "--rate {rate}: must be above 0 (and at most 1000000)"
                    ));
                }
                let burstiness = a.burstiness.unwrap_or(1.0);
                if !(burstiness.is_finite() && burstiness > 0.0) {
                    return Err(format!("--burstiness {burstiness}: must be above 0"));
                }
                Load::Open { rate, burstiness }
            }
            (None, c) => {
                let concurrency = c.unwrap_or(8);
                if !(1..=100_000).contains(&concurrency) {
                    return Err(format!(
                        "--concurrency {concurrency}: must be between 1 and 100000"
                    ));
                }
                Load::Closed { concurrency }
            }
        };
        let duration = match a.duration {
            Some(d) => Some(seconds("duration", d, 0.1)?),
            None if a.requests.is_some() || a.promote.is_some() => None,
            None => Some(Duration::from_secs(30)),
        };
        if a.requests == Some(0) {
            return Err("--requests 0: must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&a.max_in_flight) {
            return Err(format!(
                "--max-in-flight {}: must be between 1 and 1000000",
                a.max_in_flight
            ));
        }
        if let Load::Closed { concurrency } = load {
            if concurrency > a.max_in_flight {
                return Err(format!(
                    "--concurrency {concurrency} is above --max-in-flight {}",
                    a.max_in_flight
                ));
            }
        }
        let shape = if a.get {
            Shape::Get
        } else if let Some(f) = &a.body_file {
            let body = std::fs::read(f).map_err(|e| format!("--body-file {}: {e}", f.display()))?;
            serde_json::from_slice::<serde::de::IgnoredAny>(&body)
                .map_err(|e| format!("--body-file {}: not JSON: {e}", f.display()))?;
            Shape::Json(body.into())
        } else {
            let stream = match a.stream.as_str() {
                "true" => StreamChoice::Always,
                "false" => StreamChoice::Never,
                "mix" => StreamChoice::Mix,
                other => return Err(format!("--stream {other:?}: expected true, false or mix")),
            };
            Shape::Chat {
                stream,
                max_tokens: range("max-tokens", &a.max_tokens)?,
                prompt_words: range("prompt-words", &a.prompt_words)?,
            }
        };
        let path = match (&a.path, &shape) {
            (Some(p), _) => p.clone(),
            (None, Shape::Get) => target.path().to_owned(),
            (None, Shape::Json(_)) if target.path() != "/" => target.path().to_owned(),
            (None, _) => "/v1/chat/completions".to_owned(),
        };
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(format!("--path {path:?}: must be a path starting with /"));
        }
        let origin_uri: http::Uri = path
            .parse()
            .map_err(|_| format!("--path {path:?}: not a valid request path"))?;
        let absolute_uri: http::Uri = format!("http://{authority}{path}")
            .parse()
            .map_err(|_| format!("--path {path:?}: not a valid request path"))?;
        let host_header = http::HeaderValue::from_str(&authority)
            .map_err(|_| format!("target {:?}: not a valid host", a.target))?;
        let version_header = http::HeaderName::from_bytes(a.version_header.as_bytes())
            .map_err(|_| format!("--version-header {:?}: not a header name", a.version_header))?;
        if a.admin_url.is_some() && api_key.is_none() {
            return Err(
                "--admin-url needs the API key: set SWITCHYARD_API_KEY (the key the server printed)"
                    .into(),
            );
        }
        if a.promote.is_some() && a.admin_url.is_none() {
            return Err("--promote needs --admin-url (or SWITCHYARD_ADMIN_URL)".into());
        }
        let slo = match &a.slo {
            Some(s) => parse_slo(s)?,
            None => Slo::default(),
        };
        for (flag, v) in [
            ("max-error-rate", a.max_error_rate),
            ("min-goodput-percent", a.min_goodput_percent),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                    return Err(format!("--{flag} {v}: must be a percent, 0 to 100"));
                }
            }
        }
        Ok(Options {
            authority,
            target,
            load,
            duration,
            requests: a.requests,
            warmup: seconds("warmup", a.warmup, 0.0)?,
            seed: a.seed,
            max_in_flight: a.max_in_flight,
            timeout: seconds("timeout", a.timeout, 0.001)?,
            http2: a.http2,
            shape,
            path,
            origin_uri,
            absolute_uri,
            host_header,
            version_header,
            admin_url: a.admin_url.clone(),
            api_key,
            model: a.model.clone(),
            environment: a.environment.clone(),
            promote: a.promote.clone(),
            cooldown: seconds("cooldown", a.cooldown, 0.0)?,
            slo,
            json: a.json.clone(),
            html: a.html.clone(),
            max_error_rate: a.max_error_rate,
            max_broken_streams: a.max_broken_streams,
            min_goodput_percent: a.min_goodput_percent,
            quiet: a.quiet,
        })
    }

    /// The settings as the report shows them.
    pub fn run_config(&self, model: Option<&str>, environment: Option<&str>) -> RunConfig {
        let (mode, rate, burstiness, concurrency) = match self.load {
            Load::Open { rate, burstiness } => ("open", Some(rate), Some(burstiness), None),
            Load::Closed { concurrency } => ("closed", None, None, Some(concurrency)),
        };
        let (shape, stream, max_tokens, prompt_words) = match &self.shape {
            Shape::Chat {
                stream,
                max_tokens,
                prompt_words,
            } => (
                "chat",
                match stream {
                    StreamChoice::Always => "true",
                    StreamChoice::Never => "false",
                    StreamChoice::Mix => "mix",
                },
                Some(*max_tokens),
                Some(*prompt_words),
            ),
            Shape::Json(_) => ("json", "false", None, None),
            Shape::Get => ("get", "false", None, None),
        };
        RunConfig {
            target: self.target.to_string(),
            mode: mode.into(),
            rate,
            burstiness,
            concurrency,
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            requests: self.requests,
            warmup_s: self.warmup.as_secs_f64(),
            seed: self.seed,
            max_in_flight: self.max_in_flight,
            timeout_s: self.timeout.as_secs_f64(),
            http2: self.http2,
            shape: shape.into(),
            stream: stream.into(),
            path: self.path.clone(),
            max_tokens,
            prompt_words,
            slo: self.slo,
            version_header: self.version_header.to_string(),
            admin_url: self.admin_url.clone(),
            model: model.map(str::to_owned),
            environment: environment.map(str::to_owned),
            promote: self.promote.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: LoadtestArgs,
    }

    fn parse(args: &[&str]) -> Result<Options, String> {
        let cli = Cli::try_parse_from(std::iter::once("loadtest").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Options::from_args(&cli.a, None)
    }

    #[test]
    fn defaults_are_a_closed_loop_of_streamed_chats_for_30_seconds() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.load, Load::Closed { concurrency: 8 });
        assert_eq!(o.duration, Some(Duration::from_secs(30)));
        assert_eq!(o.authority, "127.0.0.1:8080");
        assert_eq!(o.path, "/v1/chat/completions");
        assert!(matches!(
            o.shape,
            Shape::Chat {
                stream: StreamChoice::Always,
                max_tokens: (16, 64),
                ..
            }
        ));
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        for (args, want) in [
            (&["--rate", "0"][..], "--rate 0"),
            (&["--rate=-3"], "--rate -3"),
            (&["--stream", "sometimes"], "--stream \"sometimes\""),
            (&["--max-tokens", "9..3"], "--max-tokens"),
            (&["--slo", "ttft=fast"], "--slo"),
            (&["--slo", "latency=5s"], "unknown objective"),
            (&["https://example.com/"], "only http://"),
            (
                &["--admin-url", "http://127.0.0.1:9090"],
                "SWITCHYARD_API_KEY",
            ),
            (&["--promote", "v2"], "--admin-url"),
            (&["--concurrency", "0"], "--concurrency 0"),
            (&["--max-error-rate", "150"], "--max-error-rate"),
            (&["--timeout", "0"], "--timeout"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn slo_and_ranges_parse() {
        let s = parse_slo("ttft=500ms, tpot=50ms,e2el=10s").unwrap();
        assert_eq!(
            (s.ttft_ms, s.tpot_ms, s.e2el_ms),
            (Some(500.0), Some(50.0), Some(10_000.0))
        );
        assert_eq!(range("max-tokens", "32").unwrap(), (32, 32));
        assert_eq!(range("max-tokens", "16..=256").unwrap(), (16, 256));
        let o = parse(&[
            "--rate",
            "20",
            "--burstiness",
            "0.5",
            "--get",
            "http://127.0.0.1:9/x",
        ])
        .unwrap();
        assert_eq!(
            o.load,
            Load::Open {
                rate: 20.0,
                burstiness: 0.5
            }
        );
        assert_eq!((o.shape, o.path.as_str()), (Shape::Get, "/x"));
    }
}
