//! The proxies' own numbers, read from their `/metrics` (Prometheus text):
//! `meshctl stat` needs no Prometheus server, only the proxies the control
//! plane knows. Only what stat reads is parsed; anything else is skipped.

use std::collections::BTreeMap;

/// One sample: a series (metric name and labels) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, with any `_total` / `_bucket` suffix.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// The samples of `text` whose metric name starts with `prefix`. A line
/// that does not parse is skipped: a proxy of another version may export
/// more than this meshctl knows.
pub fn samples(text: &str, prefix: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(brace) => (&line[..brace], &line[brace + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_owned(),
                labels: BTreeMap::new(),
                value: value.trim().parse().ok()?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices();
    let end = loop {
        // name="value", or the closing brace.
        let (start, c) = chars.next()?;
        if c == '}' {
            break start;
        }
        if c == ',' {
            continue;
        }
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].trim().to_owned();
        // Skip to the opening quote.
        while chars.next()?.0 < eq + 1 {}
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(key, value);
    };
    let value = rest[end + 1..].trim().split(' ').next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_escapes_are_read() {
        let text = "# HELP mesh_responses Calls answered\n\
# TYPE mesh_responses counter\n\
mesh_responses_total{direction=\"inbound\",service=\"catalog\",route=\"r\",method=\"List\",code=\"0\"} 7\n\
mesh_request_duration_seconds_bucket{direction=\"inbound\",service=\"catalog\",le=\"+Inf\"} 9\n\
mesh_odd_total{note=\"a \\\"quoted\\\" b, c}\"} 1.5\n\
mesh_plain 3\n\
mesh_broken{direction=\"x\" 4\n\
other_total 1\n";
        let found = samples(text, "mesh_");
        assert_eq!(found.len(), 4, "{found:#?}");
        assert_eq!(found[0].name, "mesh_responses_total");
        assert_eq!(found[0].label("service"), "catalog");
        assert_eq!(found[0].label("code"), "0");
        assert_eq!(found[0].value, 7.0);
        assert_eq!(found[1].label("le"), "+Inf");
        assert_eq!(found[2].label("note"), "a \"quoted\" b, c}");
        assert_eq!(found[2].value, 1.5);
        assert_eq!(found[3].name, "mesh_plain");
        assert_eq!(found[3].label("absent"), "");
    }
}
