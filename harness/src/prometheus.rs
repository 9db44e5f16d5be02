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
