//! JSON lines to a file, rotated by size: `events.jsonl` is renamed to
//! `events.jsonl.1` (and `.1` to `.2`, up to `keep`) before a line would
//! take it past `max_bytes`. Lines are written whole, never split.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
};

pub struct JsonLines {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl JsonLines {
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> Self {
        Self {
            path,
            max_bytes,
            keep: keep.max(1),
            file: None,
            size: 0,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        if self.path.exists() {
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        Ok(())
    }

    /// Appends one line (a newline is added).
    pub fn write(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
            return self.write(line);
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not open"))?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        file.write_all(&buf)?;
        self.size += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_every_line_within_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut out = JsonLines::new(path.clone(), 1000, 50);
        let lines: Vec<String> = (0..500)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 40)))
            .collect();
        for l in &lines {
            out.write(l).unwrap();
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files.len() > 5, "it rotated");
        // Oldest first: .N … .1, then the live file.
        files.sort_by_key(|p| {
            let s = p.display().to_string();
            std::cmp::Reverse(
                s.rsplit('.')
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0),
            )
        });
        let mut read = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(
                text.len() <= 1000,
                "{} is {} bytes",
                f.display(),
                text.len()
            );
            read.extend(text.lines().map(String::from));
        }
        assert_eq!(read, lines, "no line lost, none split, in order");
    }
}
