//! The gateway's state file: what it knows, so a restart enforces every
//! known revocation before it serves, even with the authority down.
//!
//! The file is a sequence of feed responses in the feed's own line format:
//! a snapshot group, then change groups appended as they are applied, each
//! closed by an `end` line carrying its cursor and fsync'd. Loading replays
//! complete groups and ignores a torn last one. A snapshot rewrites the
//! file through a temporary file and an atomic rename; so does compaction
//! when appended changes outgrow the snapshot.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::set::RevocationSet;
use gatehouse_core::revocation::{read_line, Change, FeedMarker, Line};

/// What [`StateFile::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The cursor the file ends at; `None` without a file, or when a line
    /// was damaged (the feed then takes a fresh snapshot, merged with what
    /// was loaded, so the damaged entry comes back from the authority).
    pub cursor: Option<String>,
    /// Whether a complete snapshot or change group was loaded: the set
    /// then holds a revocation state the gateway can enforce.
    pub has_state: bool,
    /// The first damaged line (1-based), if any.
    pub damaged_line: Option<usize>,
}

pub struct StateFile {
    path: PathBuf,
    append: Option<File>,
    /// Change lines appended since the last rewrite, and the size of that
    /// rewrite; the file is compacted when the first outgrows the second.
    appended: u64,
    snapshot_len: u64,
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        StateFile {
            path,
            append: None,
            appended: 0,
            snapshot_len: 0,
        }
    }

    /// Replays the file into `set`. A line that cannot be read is skipped
    /// and logged with the file and line, and the cursor is dropped: the
    /// entry it held would otherwise never be fetched again.
    pub fn load(&mut self, set: &mut RevocationSet) -> anyhow::Result<Loaded> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let mut cursor = None;
        let mut group: Vec<Change> = Vec::new();
        let mut in_group = false;
        // The snapshot at the head of the file was written whole (temporary
        // file, fsync, rename): its lines go straight into the set, never
        // into one buffer. Appended change groups apply only when complete.
        let mut in_snapshot = false;
        let mut lines = 0u64;
        let mut has_state = false;
        let mut damaged_line = None;
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", self.path.display()))?;
            if line.is_empty() {
                continue;
            }
            let read = read_line(line.as_bytes());
            if let Ok(Line::Marker(marker)) = read {
                match marker {
                    FeedMarker::Snapshot { .. } => {
                        group.clear();
                        in_group = true;
                        in_snapshot = true;
                    }
                    FeedMarker::Changes { .. } => {
                        group.clear();
                        in_group = true;
                        in_snapshot = false;
                    }
                    FeedMarker::End { cursor: c } => {
                        in_snapshot = false;
                        for ch in group.drain(..) {
                            set.apply_building(&ch);
                            lines += 1;
                        }
                        cursor = Some(c);
                        has_state = true;
                        in_group = false;
                    }
                }
                continue;
            }
            match read {
                Ok(Line::Change(ch)) if in_snapshot => {
                    set.apply_building(&ch);
                    lines += 1;
                }
                Ok(Line::Change(ch)) if in_group => group.push(ch),
                _ => {
                    tracing::error!(file = %self.path.display(), line = n + 1, "damaged revocation state line skipped; a fresh snapshot will be merged from the authority");
                    damaged_line.get_or_insert(n + 1);
                }
            }
        }
        set.finish_building();
        self.snapshot_len = lines;
        if damaged_line.is_some() {
            cursor = None;
        }
        Ok(Loaded {
            cursor,
            has_state,
            damaged_line,
        })
    }

    /// Replaces the file with the whole set, atomically.
    pub fn write_snapshot(&mut self, set: &RevocationSet, cursor: &str) -> anyhow::Result<()> {
        let tmp = tmp_path(&self.path);
        let mut n = 0u64;
        {
            let f = private_options()
                .write(true)
                .truncate(true)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            // A leftover temporary file keeps its old mode otherwise.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("setting the mode of {}", tmp.display()))?;
            }
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let mut err = None;
            write_line(
                &mut w,
                &FeedMarker::Snapshot {
                    cursor: cursor.to_owned(),
                },
            )?;
            set.for_each(|r| {
                if err.is_none() {
                    n += 1;
                    if let Err(e) = write_line(&mut w, &Change::Put(r)) {
                        err = Some(e);
                    }
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            write_line(
                &mut w,
                &FeedMarker::End {
                    cursor: cursor.to_owned(),
                },
            )?;
            let f = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
            f.sync_all()
                .with_context(|| format!("syncing {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("renaming to {}", self.path.display()))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.append = None;
        self.appended = 0;
        self.snapshot_len = n;
        Ok(())
    }

    /// Whether appending `n` more changes should rather rewrite the file
    /// (appends have outgrown the snapshot they follow).
    pub fn would_compact(&self, n: usize) -> bool {
        self.appended + n as u64 > self.snapshot_len.max(10_000)
    }

    /// Appends changes as one group, fsync'd.
    pub fn append(&mut self, changes: &[Change], cursor: &str) -> anyhow::Result<()> {
        if self.append.is_none() {
            let f = private_options()
                .append(true)
                .open(&self.path)
                .with_context(|| format!("opening {}", self.path.display()))?;
            self.append = Some(f);
        }
        let Some(f) = self.append.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        write_line(
            &mut buf,
            &FeedMarker::Changes {
                cursor: cursor.to_owned(),
            },
        )?;
        for c in changes {
            write_line(&mut buf, c)?;
        }
        write_line(
            &mut buf,
            &FeedMarker::End {
                cursor: cursor.to_owned(),
            },
        )?;
        f.write_all(&buf)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        f.sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        self.appended += changes.len() as u64;
        Ok(())
    }
}

/// Created readable by the gateway's user only (mode 0600): the file
/// lists every revoked session and subject.
fn private_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

fn write_line(w: &mut impl Write, v: &impl serde::Serialize) -> anyhow::Result<()> {
    Ok(gatehouse_core::revocation::write_line(w, v)?)
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    p.with_file_name(name)
}
