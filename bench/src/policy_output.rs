//! Where a `policy` run's report goes: `report.json` (everything, every trial), `report.md`
//! ([`crate::policy_report::markdown`]) and the PNG plots ([`crate::plot`]) in one directory.

use std::path::{Path, PathBuf};

use crate::policy_report::{markdown, PolicyReport};
use crate::BenchError;

/// The files a report is written to.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub throughput_png: PathBuf,
    pub latency_png: PathBuf,
}

impl ReportFiles {
    pub fn in_dir(dir: &Path) -> ReportFiles {
        ReportFiles {
            json: dir.join("report.json"),
            markdown: dir.join("report.md"),
            throughput_png: dir.join("throughput.png"),
            latency_png: dir.join("latency.png"),
        }
    }
}

/// Writes the plots (a failure becomes a note), then the JSON and the Markdown.
pub fn write(report: &mut PolicyReport, dir: &Path) -> Result<ReportFiles, BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir.display().to_string(), e))?;
    let files = ReportFiles::in_dir(dir);
    if let Err(e) = crate::plot::throughput(report, &files.throughput_png) {
        report.notes.push(format!("throughput.png not drawn: {e}"));
    }
    if let Err(e) = crate::plot::latency_cdf(report, &files.latency_png) {
        report.notes.push(format!("latency.png not drawn: {e}"));
    }
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::Failed(format!("the report as JSON: {e}")))?;
    let put = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| BenchError::io(path.display().to_string(), e))
    };
    put(&files.json, &json)?;
    put(&files.markdown, &markdown(report))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_report::tests::sample_report;

    #[test]
    fn write_puts_json_markdown_and_plots_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("fbp-report-test-{}", std::process::id()));
        let mut report = sample_report();
        let files = write(&mut report, &dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
        assert_eq!(json["points"][0]["target"], "flagella");
        assert_eq!(json["points"][0]["rate"]["median"], 450_000.0);
        assert_eq!(json["sink"], "xdp");
        assert!(std::fs::read_to_string(&files.markdown)
            .unwrap()
            .contains("| flagella |"));
        for png in [&files.throughput_png, &files.latency_png] {
            if crate::plot::font_path().is_some() {
                let bytes = std::fs::read(png).unwrap();
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{png:?}");
            } else {
                // Without a font the plots are skipped and the report says why.
                assert!(!png.exists());
                assert!(report.notes.iter().any(|n| n.contains("fonts-dejavu-core")));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
