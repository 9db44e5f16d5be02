//! Reading Prometheus' text exposition format (Envoy's `/stats/prometheus`), for tests that check metrics
//! the way a Prometheus server sees them: by family name and labels.

use std::collections::BTreeMap;

/// One sample: `family{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub family: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of an exposition (comments and unparsable lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((family, rest)) = series.split_once('{') else {
        return Some(Sample { family: series.to_string(), labels: BTreeMap::new(), value });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample { family: family.to_string(), labels, value })
}

/// The sum of the samples of `family` that carry every label of `labels` (others may have more labels).
pub fn sum(samples: &[Sample], family: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.family == family)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// A real Prometheus server (Debian's `prometheus`) on 127.0.0.1:[`PROMETHEUS_PORT`], scraping the gateway's
/// `/stats/prometheus` every second (job `egress-gateway`) and evaluating rule files every second.
pub struct Server {
    process: crate::process::Supervised,
    port: u16,
}

/// An alert Prometheus holds: its name, state (`pending`, `firing`) and labels.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

/// Where the test Prometheus listens.
pub const PROMETHEUS_PORT: u16 = 19090;
/// The scrape job of the gateway.
pub const JOB: &str = "egress-gateway";

impl Server {
    /// Starts Prometheus in `run_dir` (configuration, data, log), scraping `/stats/prometheus` on port `metrics_port`,
    /// with `rule_files`; waits until it is ready.
    pub fn start(
        run_dir: &std::path::Path,
        metrics_port: u16,
        rule_files: &[std::path::PathBuf],
    ) -> crate::Result<Server> {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                crate::err("no prometheus binary: run `scripts/setup.sh test` (Debian package prometheus)")
            })?;
        crate::topology::ensure_free(PROMETHEUS_PORT, "test Prometheus")?;
        let dir = run_dir.join("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let rules: Vec<String> = rule_files.iter().map(|p| format!("  - {}\n", p.display())).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}scrape_configs:\n- job_name: {JOB}\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: ['127.0.0.1:{metrics_port}']\n",
            rules.concat()
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let args = [
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"),
            "--web.enable-lifecycle".to_string(),
        ];
        let process =
            crate::process::Supervised::spawn("prometheus", binary, &args, &dir, &dir.join("prometheus.log"))?;
        let server = Server { process, port: PROMETHEUS_PORT };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while get(server.port, "/-/ready").map(|(s, _)| s) != Some(200) {
            if std::time::Instant::now() > deadline {
                return Err(crate::err(format!("prometheus not ready in 30 s: {}", server.process.log())));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(server)
    }

    /// An instant query: each result's labels and value.
    pub fn query(&self, promql: &str) -> crate::Result<Vec<(BTreeMap<String, String>, f64)>> {
        let (status, body) = get(self.port, &format!("/api/v1/query?query={}", url_encode(promql)))
            .ok_or_else(|| crate::err("prometheus did not answer"))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| crate::err(format!("{promql}: HTTP {status}: {e}: {body}")))?;
        if json["status"] != "success" {
            return Err(crate::err(format!("{promql}: {body}")));
        }
        let results = json["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(results
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// The sum of an instant query's values (0 when it returns nothing).
    pub fn value(&self, promql: &str) -> crate::Result<f64> {
        Ok(self.query(promql)?.iter().map(|(_, v)| v).sum())
    }

    /// The alerts Prometheus holds now.
    pub fn alerts(&self) -> crate::Result<Vec<Alert>> {
        let (_, body) = get(self.port, "/api/v1/alerts").ok_or_else(|| crate::err("prometheus did not answer"))?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| crate::err(format!("{e}: {body}")))?;
        Ok(json["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let labels: BTreeMap<String, String> = a["labels"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                let name = labels.get("alertname").cloned().unwrap_or_default();
                Alert { name, state: a["state"].as_str().unwrap_or_default().to_string(), labels }
            })
            .collect())
    }

    /// Prometheus' own log.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    crate::topology::http_get(port, path)
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes_and_bare_samples() {
        let text = "# TYPE x counter\nx{a=\"1\",b=\"q\\\"uote\"} 3\ny 2.5\nx{a=\"2\"} 4\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels.get("b").map(String::as_str), Some("q\"uote"));
        assert_eq!(sum(&samples, "x", &[]), 7.0);
        assert_eq!(sum(&samples, "x", &[("a", "2")]), 4.0);
        assert_eq!(sum(&samples, "y", &[]), 2.5);
    }
}
