//! Starting the new binary: which file (the one the daemon was started from, read again from
//! disk), with which arguments and environment, and how it is stopped on a rollback.
//!
//! `/proc/self/exe` is a trap: after a package upgrade replaced the file it points to the
//! old, deleted inode ("/usr/bin/sluice (deleted)"), and it has resolved symlinks the
//! operator meant to follow. So [`StartedAs::capture`] records at start the path the
//! process was started by — `argv[0]` made absolute (against the working directory, or
//! looked up in `PATH` when it has no `/`), kept only if it is the file that is running
//! then, else `current_exe()` — with the arguments and working directory. An upgrade execs
//! that path again, so it runs whatever file is there now.
//!
//! The child gets one end of the hand-over channel as an inherited fd named by
//! `SLUICE_HANDOVER_FD`; `LISTEN_*` (meant for this process) and `WATCHDOG_PID` (this
//! process's pid: the child owns the watchdog once it is the main process) are removed
//! from its environment. It is stopped by its PID through its `Child` handle, which is
//! never reaped before the kill, so the PID cannot have been reused.

use super::HANDOVER_FD_ENV;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How this process was started, captured at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedAs {
    /// Absolute path of the binary, as it was named at start.
    pub binary: PathBuf,
    /// The arguments after `argv[0]`.
    pub args: Vec<OsString>,
    /// The working directory at start (relative `--config` paths are relative to it).
    pub cwd: PathBuf,
}

/// What [`StartedAs::remember`] captured, for the daemon.
static REMEMBERED: std::sync::OnceLock<Result<StartedAs, String>> = std::sync::OnceLock::new();

impl StartedAs {
    /// Captures how this process was started ([`Self::capture`]), once; `main` calls it
    /// first thing. Later calls return the first capture.
    pub fn remember() -> Result<&'static StartedAs, &'static str> {
        REMEMBERED
            .get_or_init(|| StartedAs::capture().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }

    /// What [`Self::remember`] captured, if it was called.
    pub fn remembered() -> Option<&'static StartedAs> {
        REMEMBERED.get().and_then(|r| r.as_ref().ok())
    }

    /// Reads `argv`, `PATH`, the working directory and `/proc/self/exe` now. Call it first
    /// thing in `main`, before a package upgrade can replace the file.
    pub fn capture() -> io::Result<StartedAs> {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        let args = argv.collect();
        let cwd = std::env::current_dir()?;
        let exe = std::env::current_exe()?;
        let binary = resolve_argv0(Path::new(&argv0), &cwd, std::env::var_os("PATH").as_deref())
            .filter(|p| same_file(p, &exe))
            .unwrap_or(exe);
        Ok(StartedAs { binary, args, cwd })
    }
}

/// `argv[0]` as an absolute path: joined to `cwd` when it has a `/`, else the first
/// executable file of that name in `path` (as the shell found it).
pub fn resolve_argv0(argv0: &Path, cwd: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if argv0.as_os_str().is_empty() {
        return None;
    }
    if argv0.as_os_str().as_encoded_bytes().contains(&b'/') {
        return Some(cwd.join(argv0));
    }
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(argv0))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Checks that `path` is a binary this daemon may run for an upgrade: a regular,
/// executable file, owned by root or by the daemon's user, that neither group nor others
/// may write (anyone who could write it could run code as the daemon). The error says
/// what is wrong, in words for `ctl upgrade`.
pub fn check_binary(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown}: not an absolute path"));
    }
    let m = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if !m.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let mode = m.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!(
            "{shown}: not executable (mode {:o})",
            mode & 0o7777
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{shown}: writable by group or others (mode {:o}): refusing to run it as the daemon",
            mode & 0o7777
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != me {
        return Err(format!(
            "{shown}: owned by uid {}, neither root nor the daemon's uid {me}: refusing to run it",
            m.uid()
        ));
    }
    Ok(())
}

/// Variables of this process that must not reach the new one.
const NOT_INHERITED: [&str; 4] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID"];

/// Starts `binary` with `started`'s arguments and working directory, handing it
/// `channel` (its end of the hand-over socket) as an inherited fd.
pub fn spawn(binary: &Path, started: &StartedAs, channel: OwnedFd) -> io::Result<Child> {
    // The one descriptor the child inherits: clear its close-on-exec flag just before the
    // spawn; our copy is closed right after.
    rustix::io::fcntl_setfd(&channel, rustix::io::FdFlags::empty())?;
    let child = command(binary, started, channel.as_raw_fd()).spawn();
    drop(channel);
    child
}

/// The command line of the new process, its end of the channel being fd `channel`.
fn command(binary: &Path, started: &StartedAs, channel: i32) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(&started.args)
        .current_dir(&started.cwd)
        .env(HANDOVER_FD_ENV, channel.to_string())
        .stdin(Stdio::null());
    for var in NOT_INHERITED {
        cmd.env_remove(var);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_is_made_absolute_as_the_shell_found_it() {
        let cwd = Path::new("/srv/work");
        assert_eq!(
            resolve_argv0(Path::new("./target/sluice"), cwd, None),
            Some(PathBuf::from("/srv/work/./target/sluice"))
        );
        assert_eq!(
            resolve_argv0(Path::new("/usr/bin/sluice"), cwd, None),
            Some(PathBuf::from("/usr/bin/sluice"))
        );
        // Looked up in PATH: the first executable of that name (here: `sh`).
        let found = resolve_argv0(
            Path::new("sh"),
            cwd,
            Some(std::ffi::OsStr::new("relative:/nonexistent:/bin:/usr/bin")),
        )
        .unwrap();
        assert!(found == Path::new("/bin/sh") || found == Path::new("/usr/bin/sh"));
        assert_eq!(
            resolve_argv0(Path::new("no-such-binary-here"), cwd, Some("/bin".as_ref())),
            None
        );
        assert_eq!(resolve_argv0(Path::new(""), cwd, None), None);
    }

    #[test]
    fn the_captured_binary_is_the_running_file() {
        let s = StartedAs::capture().unwrap();
        assert!(s.binary.is_absolute());
        assert!(same_file(&s.binary, &std::env::current_exe().unwrap()));
    }

    #[test]
    fn the_new_process_gets_the_channel_and_not_what_was_meant_for_this_one() {
        let started = StartedAs {
            binary: PathBuf::from("/usr/bin/sluice"),
            args: vec!["run".into(), "--config".into(), "a.toml".into()],
            cwd: PathBuf::from("/etc/sluice"),
        };
        let cmd = command(Path::new("/usr/bin/sluice"), &started, 7);
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(envs.contains(&("SLUICE_HANDOVER_FD".into(), Some("7".into()))));
        for gone in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID"] {
            assert!(envs.contains(&(gone.into(), None)), "{gone} is passed on");
        }
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["run", "--config", "a.toml"]);
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/etc/sluice")));
    }

    #[test]
    fn binaries_others_could_change_are_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-binary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("sluice");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let set = |mode| std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(mode));
        set(0o755).unwrap();
        check_binary(&bin).unwrap();
        set(0o644).unwrap();
        assert!(check_binary(&bin).unwrap_err().contains("not executable"));
        set(0o775).unwrap();
        assert!(check_binary(&bin)
            .unwrap_err()
            .contains("writable by group or others"));
        assert!(check_binary(&dir)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(check_binary(Path::new("sluice"))
            .unwrap_err()
            .contains("not an absolute path"));
        assert!(check_binary(&dir.join("missing"))
            .unwrap_err()
            .contains("No such file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
