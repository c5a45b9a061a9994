//! Figures, their ratio to the SQL ceiling, medians over repeated runs, the
//! printed table and the JSON file.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// The ceiling figure a throughput figure is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Ceiling {
    /// The plain-SQL lifecycle with one job per statement.
    Single,
    /// The plain-SQL lifecycle with 100 jobs per statement.
    Batch,
}

/// The names of the two ceiling figures, which the ratios look up.
pub(crate) const CEILING_SINGLE: &str = "lifecycle, 1 job per statement";
pub(crate) const CEILING_BATCH: &str = "lifecycle, 100 jobs per statement";

/// The names of the figures the map ratio divides.
pub(crate) const MAP_ITEMS: &str = "items through one mapper step";
pub(crate) const TASKS_PROCESSING: &str = "processing, no-op handler";

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub(crate) scenario: &'static str,
    pub(crate) figure: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) parameters: serde_json::Value,
    /// The ceiling this figure is compared with; none for latencies, memory
    /// and other figures that are not a rate of jobs.
    pub(crate) ceiling: Option<Ceiling>,
    /// `value` divided by the matching ceiling of the same run, when the run
    /// measured the ceiling.
    pub(crate) ratio_to_ceiling: Option<f64>,
}

impl Figure {
    /// Creates a figure with no ceiling to compare with.
    pub(crate) fn new(
        scenario: &'static str,
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        parameters: serde_json::Value,
    ) -> Self {
        Figure {
            scenario,
            figure: figure.into(),
            value,
            unit,
            parameters,
            ceiling: None,
            ratio_to_ceiling: None,
        }
    }

    /// Compares this figure with `ceiling`.
    pub(crate) fn against(mut self, ceiling: Ceiling) -> Self {
        self.ceiling = Some(ceiling);
        self
    }
}

/// Fills in `ratio_to_ceiling` from the ceiling figures of the same run.
pub(crate) fn add_ceiling_ratios(figures: &mut [Figure]) {
    let lookup = |name: &str| {
        figures
            .iter()
            .find(|figure| figure.scenario == "ceiling" && figure.figure == name)
            .map(|figure| figure.value)
            .filter(|value| *value > 0.0)
    };
    let single = lookup(CEILING_SINGLE);
    let batch = lookup(CEILING_BATCH);
    for figure in figures.iter_mut() {
        let ceiling = match figure.ceiling {
            Some(Ceiling::Single) => single,
            Some(Ceiling::Batch) => batch,
            None => None,
        };
        figure.ratio_to_ceiling = ceiling.map(|ceiling| figure.value / ceiling);
    }
}

/// Adds the map rate divided by the tasks processing rate, when the run
/// measured both.
pub(crate) fn add_map_to_tasks_ratio(figures: &mut Vec<Figure>) {
    let find = |scenario: &str, name: &str| {
        figures
            .iter()
            .find(|figure| figure.scenario == scenario && figure.figure == name)
            .map(|figure| figure.value)
    };
    let (Some(map), Some(tasks)) = (find("map", MAP_ITEMS), find("tasks", TASKS_PROCESSING)) else {
        return;
    };
    if tasks > 0.0 {
        figures.push(Figure::new(
            "map",
            "items per second / tasks processing",
            map / tasks,
            "x",
            serde_json::json!({ "tasks_figure": TASKS_PROCESSING }),
        ));
    }
}

/// One figure over all repeated runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    #[serde(flatten)]
    pub(crate) figure: Figure,
    /// The value of each run, in run order; `figure.value` is their median.
    pub(crate) runs: Vec<f64>,
}

/// Reduces repeated runs to one row per figure, with the median value and
/// the median ratio to the ceiling. Figures are matched by scenario and
/// name; every run measures the same figures in the same order.
pub(crate) fn summarize(runs: &[Vec<Figure>]) -> Vec<Summary> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|figure| {
            let same: Vec<&Figure> = runs
                .iter()
                .filter_map(|run| {
                    run.iter().find(|other| {
                        other.scenario == figure.scenario && other.figure == figure.figure
                    })
                })
                .collect();
            let values: Vec<f64> = same.iter().map(|figure| figure.value).collect();
            let ratios: Vec<f64> = same
                .iter()
                .filter_map(|figure| figure.ratio_to_ceiling)
                .collect();
            let mut summary = figure.clone();
            summary.value = median(&values);
            summary.ratio_to_ceiling = (!ratios.is_empty()).then(|| median(&ratios));
            Summary {
                figure: summary,
                runs: values,
            }
        })
        .collect()
}

/// Returns the median of `values`: the mean of the middle two for an even
/// count, and 0 for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Prints one row per figure. With more than one run the value is the
/// median and the runs follow it.
pub(crate) fn print_table(summary: &[Summary], repeat: usize) {
    let value_header = if repeat > 1 { "MEDIAN" } else { "VALUE" };
    println!(
        "{:<8} {:<52} {:>12} {:<12} {:>11}{}",
        "SCENARIO",
        "FIGURE",
        value_header,
        "UNIT",
        "VS CEILING",
        if repeat > 1 { "  RUNS" } else { "" }
    );
    for row in summary {
        let figure = &row.figure;
        let ratio = match (figure.ratio_to_ceiling, figure.ceiling) {
            (Some(ratio), Some(Ceiling::Single)) => format!("{ratio:.2}x 1"),
            (Some(ratio), Some(Ceiling::Batch)) => format!("{ratio:.2}x 100"),
            _ => String::new(),
        };
        let runs = if repeat > 1 {
            let values: Vec<String> = row.runs.iter().map(|value| format!("{value:.2}")).collect();
            format!("  {}", values.join(" / "))
        } else {
            String::new()
        };
        println!(
            "{:<8} {:<52} {:>12.2} {:<12} {:>11}{runs}",
            figure.scenario, figure.figure, figure.value, figure.unit, ratio
        );
    }
    if summary
        .iter()
        .any(|row| row.figure.ratio_to_ceiling.is_some())
    {
        println!(
            "VS CEILING: the value divided by the ceiling lifecycle of the same run, \
             with 1 or 100 jobs per statement."
        );
    }
}

/// The settings of a bench invocation, recorded beside the figures.
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) window: Duration,
    pub(crate) repeat: usize,
    pub(crate) server_version: String,
    /// The server settings that change the figures most, by name.
    pub(crate) server_settings: Vec<(String, String)>,
    /// `/proc/loadavg` before the first and after the last scenario, to
    /// show how busy the machine was.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

/// Reads the server settings that change the figures most: durability,
/// autovacuum and memory. A server with autovacuum off leaves every dead
/// row of a scenario in place until the worker's own vacuums.
pub(crate) async fn server_settings(
    admin: &tokio_postgres::Client,
) -> anyhow::Result<Vec<(String, String)>> {
    let rows = admin
        .query(
            "SELECT name, setting FROM pg_settings
              WHERE name IN ('autovacuum', 'autovacuum_naptime', 'fsync', 'full_page_writes',
                             'synchronous_commit', 'shared_buffers', 'max_connections')
              ORDER BY name",
            &[],
        )
        .await
        .context("read the server settings")?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Writes the figures with the PostgreSQL version, commit, machine and time
/// to `out`.
pub(crate) fn write_json(
    out: &Path,
    summary: &[Summary],
    settings: &Settings,
) -> anyhow::Result<()> {
    let machine = serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model(),
        "memory_mib": memory_kib() / 1024,
    });
    // `cargo xtask bench` passes its own command line; run directly, the
    // binary records its arguments.
    let command = std::env::var("CB_BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let report = serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "command": command,
        "quick": settings.quick,
        "window_seconds": settings.window.as_secs(),
        "repeat": settings.repeat,
        "postgres_version": settings.server_version,
        "server_settings": settings
            .server_settings
            .iter()
            .map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone())))
            .collect::<serde_json::Map<_, _>>(),
        "commit": std::env::var("CB_BENCH_COMMIT").unwrap_or_default(),
        "machine": machine,
        "load_average_before": settings.load_before,
        "load_average_after": settings.load_after,
        "figures": summary,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Returns the 1, 5 and 15 minute load averages, or an empty string
/// outside Linux.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|load| {
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_default()
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(scenario: &'static str, name: &str, value: f64) -> Figure {
        Figure::new(scenario, name, value, "jobs/s", serde_json::Value::Null)
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn ratios_use_the_matching_ceiling() {
        let mut figures = vec![
            figure("ceiling", CEILING_SINGLE, 1_000.0),
            figure("ceiling", CEILING_BATCH, 10_000.0),
            figure("queue", "single", 800.0).against(Ceiling::Single),
            figure("queue", "batch", 5_000.0).against(Ceiling::Batch),
            figure("latency", "p50", 1.0),
        ];
        add_ceiling_ratios(&mut figures);
        assert_eq!(figures[2].ratio_to_ceiling, Some(0.8));
        assert_eq!(figures[3].ratio_to_ceiling, Some(0.5));
        assert_eq!(figures[4].ratio_to_ceiling, None);
    }

    #[test]
    fn ratios_need_a_ceiling_in_the_run() {
        let mut figures = vec![figure("queue", "single", 800.0).against(Ceiling::Single)];
        add_ceiling_ratios(&mut figures);
        assert_eq!(figures[0].ratio_to_ceiling, None);
    }

    #[test]
    fn map_ratio_divides_by_tasks_processing() {
        let mut figures = vec![
            figure("tasks", TASKS_PROCESSING, 2_000.0),
            figure("map", MAP_ITEMS, 1_000.0),
        ];
        add_map_to_tasks_ratio(&mut figures);
        assert_eq!(figures.len(), 3);
        assert_eq!(figures[2].scenario, "map");
        assert_eq!(figures[2].value, 0.5);
    }

    #[test]
    fn map_ratio_needs_both_figures() {
        let mut figures = vec![figure("map", MAP_ITEMS, 1_000.0)];
        add_map_to_tasks_ratio(&mut figures);
        assert_eq!(figures.len(), 1);
    }

    #[test]
    fn summarize_takes_medians_per_figure() {
        let runs: Vec<Vec<Figure>> = [1.0, 3.0, 2.0]
            .iter()
            .map(|value| vec![figure("tasks", "processing", *value)])
            .collect();
        let summary = summarize(&runs);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].figure.value, 2.0);
        assert_eq!(summary[0].runs, vec![1.0, 3.0, 2.0]);
    }
}
