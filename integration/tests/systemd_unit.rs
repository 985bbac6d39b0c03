//! The systemd unit passes `systemd-analyze verify` and says what the agent
//! relies on; `systemd/install.sh` puts the files where the unit expects them.
//!
//! Works without systemd as PID 1 and without anything installed: the unit is
//! verified from a scratch directory, with ExecStart pointing at a binary that
//! exists and a stub containerd.service next to it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, ensure};
use berth_integration::{agent_binary, require_tool, workspace_dir};

const INSTALLED_BIN: &str = "/usr/local/bin/berth-agent";

fn unit_path() -> PathBuf {
    workspace_dir().join("systemd/berth-agent.service")
}

/// `[Section]` → key → values (keys may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[test]
fn unit_declares_what_the_agent_relies_on() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(unit_path())?;
    let unit = parse_unit(&text);
    let get = |section: &str, key: &str| -> Vec<String> {
        unit.get(section)
            .and_then(|s| s.get(key))
            .cloned()
            .unwrap_or_default()
    };
    for (section, key, want) in [
        ("Service", "Type", "notify"),
        ("Service", "KillMode", "process"),
        ("Service", "Restart", "always"),
        ("Service", "RestartSec", "5"),
        ("Service", "OOMScoreAdjust", "-999"),
        ("Service", "Delegate", "no"),
        // The tests and benchmarks run the agent with it too (integration::agent).
        ("Service", "Environment", "MALLOC_ARENA_MAX=2"),
        (
            "Service",
            "ExecStart",
            "/usr/local/bin/berth-agent --config /etc/berth/config.yaml",
        ),
        ("Unit", "Requires", "containerd.service"),
        ("Install", "WantedBy", "multi-user.target"),
    ] {
        let got = get(section, key);
        ensure!(
            got == [want],
            "[{section}] {key}: expected exactly {want:?}, found {got:?}"
        );
    }
    let after = get("Unit", "After").join(" ");
    for dep in ["containerd.service", "network-online.target"] {
        ensure!(
            after.split_whitespace().any(|d| d == dep),
            "After= lacks {dep}: {after:?}"
        );
    }
    ensure!(!get("Unit", "Description").is_empty(), "no Description=");
    ensure!(
        !get("Unit", "Documentation").is_empty(),
        "no Documentation="
    );
    ensure!(!get("Service", "LimitNOFILE").is_empty(), "no LimitNOFILE=");
    Ok(())
}

#[test]
fn unit_passes_systemd_analyze_verify() -> anyhow::Result<()> {
    let Some(analyze) = require_tool("unit_passes_systemd_analyze_verify", "systemd-analyze")
    else {
        return Ok(());
    };
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();

    // ExecStart must name an existing executable: the built agent if there is one.
    let bin = match agent_binary() {
        Ok(bin) => bin,
        Err(_) => {
            let stub = dir.join("berth-agent");
            write_executable(&stub, "#!/bin/sh\nexit 0\n")?;
            stub
        }
    };
    let text = std::fs::read_to_string(unit_path())?;
    ensure!(
        text.contains(&format!("ExecStart={INSTALLED_BIN} ")),
        "unexpected ExecStart in the unit"
    );
    let rewritten = text.replace(
        &format!("ExecStart={INSTALLED_BIN} "),
        &format!("ExecStart={} ", bin.display()),
    );
    let unit = dir.join("berth-agent.service");
    std::fs::write(&unit, rewritten)?;
    // The unit Requires= containerd.service; a stub keeps the check independent
    // of whether (and how) containerd is installed on this machine. verify
    // searches the directories of the units it is given first.
    std::fs::write(
        dir.join("containerd.service"),
        "[Unit]\nDescription=stub containerd for verify\n\n[Service]\nExecStart=/bin/true\n",
    )?;

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .with_context(|| format!("running {}", analyze.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(0),
        "systemd-analyze verify exited {:?}:\n{stderr}{stdout}",
        out.status.code()
    );
    // verify exits 0 on mere warnings (e.g. an unknown directive), so read them.
    let ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("berth-agent") || l.contains(&*dir.to_string_lossy()))
        .collect();
    ensure!(
        ours.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        ours.join("\n")
    );
    if !stderr.trim().is_empty() {
        eprintln!("systemd-analyze verify (about other units):\n{stderr}");
    }
    Ok(())
}

#[test]
fn install_script_stages_files_under_install_root() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    let bin = scratch.path().join("berth-agent-build");
    write_executable(&bin, "#!/bin/sh\necho fake berth-agent\n")?;
    let script = workspace_dir().join("systemd/install.sh");
    let run = || -> anyhow::Result<String> {
        let out = Command::new("bash")
            .arg(&script)
            .arg(&bin)
            .env("BERTH_INSTALL_ROOT", &root)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "install.sh failed ({}):\n{text}",
            out.status
        );
        Ok(text)
    };
    let first = run()?;
    ensure!(
        first.contains("systemd left alone"),
        "install.sh output:\n{first}"
    );

    let installed = root.join("usr/local/bin/berth-agent");
    ensure!(
        std::fs::read(&installed)? == std::fs::read(&bin)?,
        "binary not copied"
    );
    ensure!(
        std::fs::metadata(&installed)?.permissions().mode() & 0o777 == 0o755,
        "binary not mode 0755"
    );
    let repo = workspace_dir();
    for (dest, src) in [
        (
            "etc/systemd/system/berth-agent.service",
            "systemd/berth-agent.service",
        ),
        ("etc/berth/config.yaml", "systemd/config.yaml"),
    ] {
        ensure!(
            std::fs::read(root.join(dest))? == std::fs::read(repo.join(src))?,
            "{dest} differs from {src}"
        );
    }
    for d in ["etc/berth/manifests", "var/lib/berth", "var/log/pods"] {
        ensure!(root.join(d).is_dir(), "{d} not created");
    }

    // A second run keeps an edited config.
    let config = root.join("etc/berth/config.yaml");
    std::fs::write(&config, "nodeName: edited\n")?;
    let second = run()?;
    ensure!(
        std::fs::read_to_string(&config)? == "nodeName: edited\n",
        "install.sh overwrote an existing config:\n{second}"
    );
    Ok(())
}

#[test]
fn default_config_uses_the_documented_keys() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(workspace_dir().join("systemd/config.yaml"))?;
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect();
    let expected = [
        "containerRuntimeEndpoint",
        "podManifestPath",
        "rootDir",
        "podLogsDir",
        "statusAddress",
        "fileCheckFrequency",
        "syncFrequency",
        "logFormat",
    ];
    ensure!(
        keys == expected,
        "config.yaml keys {keys:?}, expected {expected:?}"
    );
    ensure!(
        text.contains("# nodeName:"),
        "nodeName should be present, commented out"
    );
    Ok(())
}
