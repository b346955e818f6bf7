//! What `fitbench report` wrote, as a table.

use super::new_table;
use crate::report::Report;

pub fn report_table(report: &Report) -> String {
    let mut table = new_table();
    table.set_header(vec!["chart", "files"]);
    for chart in &report.charts {
        let files = match &chart.skipped {
            Some(reason) => format!("not drawn: {reason}"),
            None => chart
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        table.add_row(vec![chart.heading.to_string(), files]);
    }
    format!(
        "{table}\n{} rows from {} ({}); report: {}",
        report.rows,
        if report.boxes.len() == 1 {
            "1 box".to_string()
        } else {
            format!("{} boxes", report.boxes.len())
        },
        report.boxes.join(", "),
        report.markdown.display()
    )
}
