//! What a result was measured on and when, for the lines printed under a table: UTC time, load
//! average, core count, CPU model and clock, kernel.

use crate::topo::run;

/// The first line of `program args`' output, or that it is missing.
pub fn first_line(program: &str, args: &[&str]) -> String {
    run(program, args)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| format!("{program}: not found"))
}

/// `<date> UTC; load average a b c; nproc N; <CPU model> (<MHz> MHz); Linux <release>`.
pub fn describe() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu_model(&cpuinfo).unwrap_or("unknown CPU");
    let mhz = crate::forward::cpu_mhz().map_or_else(String::new, |m| format!(" ({m:.0} MHz)"));
    format!(
        "{}; load average {}; nproc {}; {model}{mhz}; Linux {}",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        load.join(" "),
        first_line("nproc", &[]),
        first_line("uname", &["-r"]),
    )
}

/// The first `model name` of /proc/cpuinfo's text.
pub fn cpu_model(cpuinfo: &str) -> Option<&str> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.098\n";
        assert_eq!(cpu_model(text), Some("AMD EPYC"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
