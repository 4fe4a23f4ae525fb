//! Child processes: output to a log file, killed (by their own pid) and reaped on drop.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::wait::Wait;

/// A running child process; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Mutex<Child>,
    name: String,
    log: PathBuf,
}

/// `program`, or `taskset -c <cpu> program` when pinned to a core: taskset execs the
/// program, so the pid is the program's own.
pub fn command(program: &Path, cpu: Option<u32>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr written to `log` (created
    /// anew). `name` names the process in messages.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> io::Result<Process> {
        let out = File::create(log)?;
        let child = command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
        Ok(Process { child: Mutex::new(child), name: name.to_owned(), log: log.to_path_buf() })
    }

    /// [`Process::spawn`], panicking with `hint` (how to get the program) if it cannot start.
    pub fn start(name: &str, command: Command, log: &Path, hint: &str) -> Process {
        let program = format!("{:?}", command.get_program());
        Process::spawn(name, command, log).unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}. {hint}"))
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// How it exited, if it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Panics with the end of the log if the process has exited.
    pub fn assert_running(&self) {
        if let Some(status) = self.exit_status() {
            panic!("{} exited ({status}); end of {}:\n{}", self.name, self.log.display(), self.log_tail(40));
        }
    }

    /// Polls `ready` until it holds, or until the process exits: then `Err` with how it
    /// exited. Panics with the end of the log if neither comes within `deadline`.
    pub fn wait_ready(&self, deadline: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ExitStatus> {
        let what = format!("{} to be ready (log: {})", self.name, self.log.display());
        Wait::new(what).at_most(deadline).until_ok(|| {
            if let Some(status) = self.exit_status() {
                return Ok(Err(status));
            }
            if ready() {
                return Ok(Ok(()));
            }
            Err(format!("end of its log:\n{}", self.log_tail(40)))
        })
    }

    /// [`Process::wait_ready`], panicking with the end of the log if the process exits.
    pub fn expect_ready(&self, deadline: Duration, ready: impl FnMut() -> bool) {
        if let Err(status) = self.wait_ready(deadline, ready) {
            panic!("{} exited at start ({status}); end of {}:\n{}", self.name, self.log.display(), self.log_tail(40));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `lines` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..).unwrap_or_default().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_killed_on_drop_and_its_exit_is_seen() {
        let dir = crate::scratch::fresh_temp("process");
        let mut sleeper = Command::new("sh");
        sleeper.args(["-c", "echo started; exec sleep 600"]);
        let process = Process::start("sh", sleeper, &dir.join("sh.log"), "");
        process.expect_ready(Duration::from_secs(10), || process.log().contains("started"));
        assert!(process.exit_status().is_none());
        drop(process);

        let mut failing = Command::new("sh");
        failing.args(["-c", "echo oops; exit 3"]);
        let process = Process::start("sh", failing, &dir.join("fail.log"), "");
        let status = process.wait_ready(Duration::from_secs(10), || false).unwrap_err();
        assert_eq!(status.code(), Some(3));
        assert_eq!(process.log_tail(1), "oops");
        let _ = fs::remove_dir_all(dir);
    }
}
