//! The Fhirwall server under test as a child process: started on a fresh data directory and an
//! ephemeral port, its client registered with `fhirwall client add`, its memory read from
//! `/proc`, and stopped with SIGTERM (then SIGKILL) whatever way the benchmark ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// A running `fhirwall serve`.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    bin: PathBuf,
    pub base_url: String,
    pub ca_pem: PathBuf,
    pub data_dir: PathBuf,
    pub stderr_log: PathBuf,
}

/// A `Command` for the server binary with every inherited `FHIRWALL_*` variable removed (the
/// server refuses unknown ones) and `FHIRWALL_LOG` set to `log_filter`.
fn command(bin: &Path, log_filter: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FHIRWALL_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("FHIRWALL_LOG", log_filter);
    cmd
}

impl ServerProcess {
    /// Starts `bin serve` on `data_dir` (which must not hold another server's data) and waits
    /// for it to print its URL and CA file. Its standard error goes to `stderr_log`.
    pub fn start(bin: &Path, data_dir: &Path, stderr_log: &Path, log_filter: &str) -> Result<Self> {
        let log = std::fs::File::create(stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut child = command(bin, log_filter)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the server's stdout is not piped"))?;
        let mut server = ServerProcess {
            child: Some(child),
            bin: bin.to_path_buf(),
            base_url: String::new(),
            ca_pem: PathBuf::new(),
            data_dir: data_dir.to_path_buf(),
            stderr_log: stderr_log.to_path_buf(),
        };
        // A thread reads stdout for as long as the server lives, so it never blocks on a full pipe.
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    // Nobody listens any more: keep draining.
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.base_url.is_empty() || server.ca_pem.as_os_str().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines_rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
                    bail!(
                        "the server did not print its URL and CA within 60 s; its stderr:\n{}",
                        tail(&log, 20)
                    );
                }
            };
            if let Some(url) = line.strip_prefix("fhirwall listening on ") {
                server.base_url = url
                    .trim()
                    .strip_suffix("/fhir")
                    .unwrap_or(url.trim())
                    .to_string();
            } else if let Some(path) = line.strip_prefix("development CA certificate: ") {
                server.ca_pem = PathBuf::from(path.trim());
            }
        }
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `https://127.0.0.1:PORT/auth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.base_url)
    }

    /// Registers a backend-services client with the public keys in `jwks_file`; returns its id.
    pub fn register_client(&self, name: &str, jwks_file: &Path, scope: &str) -> Result<String> {
        let output = command(&self.bin, "warn")
            .arg("client")
            .arg("add")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--name")
            .arg(name)
            .arg("--jwks")
            .arg(jwks_file)
            .arg("--scope")
            .arg(scope)
            .stdin(Stdio::null())
            .output()
            .context("running fhirwall client add")?;
        if !output.status.success() {
            bail!(
                "fhirwall client add failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let id = String::from_utf8(output.stdout)?.trim().to_string();
        if id.is_empty() || id.contains(char::is_whitespace) {
            bail!("fhirwall client add printed an unexpected id {id:?}");
        }
        Ok(id)
    }

    /// VmRSS and VmHWM (peak) of the server, in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let pid = self.pid().ok_or_else(|| anyhow!("the server is stopped"))?;
        process_memory_kib(pid)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGTERM, waits up to `grace` for a clean exit, then kills. Returns a description
    /// of how it ended.
    pub fn stop(&mut self, grace: Duration) -> Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("already stopped".into());
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(format!("had already exited ({status})"));
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let deadline = Instant::now() + grace;
        if sent {
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait()? {
                    return Ok(format!("exited after SIGTERM ({status})"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        child.kill()?;
        let status = child.wait()?;
        Ok(format!(
            "did not stop within {} s of SIGTERM; killed ({status})",
            grace.as_secs()
        ))
    }

    /// The server's standard error so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// VmRSS and VmHWM of process `pid`, in KiB, from `/proc/PID/status`.
pub fn process_memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Apparent size (sum of file lengths) and allocated size (blocks) of everything under `dir`.
pub fn dir_size(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in
            std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    Ok((apparent, allocated))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines
        .iter()
        .skip(skip)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}
