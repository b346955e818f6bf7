//! Board, OS and thermal state.

use super::cpu::read_trimmed;
use super::{Os, TemperatureSensor, Thermal};
use std::path::Path;
use std::process::Command;

/// The device-tree model: "Raspberry Pi 4 Model B Rev 1.4", "NVIDIA Jetson Orin Nano ...".
pub fn board() -> Option<String> {
    read_trimmed(Path::new("/proc/device-tree/model"))
}

pub fn os() -> Os {
    Os {
        name: sysinfo::System::long_os_version().unwrap_or_else(|| std::env::consts::OS.into()),
        kernel: sysinfo::System::kernel_version().unwrap_or_else(|| "unknown".into()),
    }
}

pub fn thermal(notes: &mut Vec<String>, is_raspberry_pi: bool) -> Thermal {
    let components = sysinfo::Components::new_with_refreshed_list();
    let sensors = components
        .iter()
        .filter_map(|c| {
            let celsius = c.temperature()?;
            celsius.is_finite().then(|| TemperatureSensor {
                label: c.label().to_string(),
                celsius,
            })
        })
        .collect();
    let throttled = if is_raspberry_pi {
        let value = vcgencmd_throttled();
        if value.is_none() {
            notes.push("throttle state unknown: `vcgencmd get_throttled` is not available".into());
        }
        value
    } else {
        None
    };
    Thermal { sensors, throttled }
}

/// `vcgencmd get_throttled` prints "throttled=0x50005"; non-zero bits mean under-voltage,
/// capped frequency or throttling now (low bits) or since boot (bits 16+).
pub fn vcgencmd_throttled() -> Option<String> {
    let output = Command::new("vcgencmd")
        .arg("get_throttled")
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_throttled(&String::from_utf8_lossy(&output.stdout))
}

/// True when the Pi's firmware says it is throttled or capped right now (bits 0–3).
pub fn throttled_now(value: &str) -> bool {
    u32::from_str_radix(value.trim_start_matches("0x"), 16).is_ok_and(|bits| bits & 0xF != 0)
}

fn parse_throttled(text: &str) -> Option<String> {
    let value = text.trim().strip_prefix("throttled=")?;
    value.starts_with("0x").then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcgencmd_output_parses() {
        assert_eq!(
            parse_throttled("throttled=0x50005\n").as_deref(),
            Some("0x50005")
        );
        assert_eq!(parse_throttled("error=1 error_msg=\"x\""), None);
        assert!(throttled_now("0x50005"));
        assert!(!throttled_now("0x50000"), "only since boot, not now");
    }
}
