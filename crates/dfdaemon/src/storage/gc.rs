//! Garbage collection: expired tasks first, then least recently accessed until the quota and
//! the disk-used percent are met. Never a task in use, never a `Running` one.

use super::{Deleted, DiskUsage, Result, Storage, StorageError, TaskRecord, TaskState, lock};
use dragonfly_common::task_id::TaskId;
use std::time::Duration;

/// When GC evicts. The daemon maps its `storage` config section onto this.
#[derive(Debug, Clone, PartialEq)]
pub struct GcPolicy {
    /// Evict tasks not accessed for longer than this (`taskExpireTime`). Zero disables expiry.
    pub task_ttl: Duration,
    /// Keep the stored tasks' bytes (plus incoming bytes) at or under this (`diskGCThreshold`).
    pub quota_bytes: Option<u64>,
    /// Keep the filesystem's used percent (plus incoming bytes) at or under this
    /// (`diskGCThresholdPercent`, 0..=100).
    pub disk_used_percent: Option<f64>,
}

/// Why a task was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionReason {
    /// Not accessed within the TTL.
    Expired,
    /// Over the byte quota.
    Quota,
    /// Over the disk-used percent.
    DiskUsage,
}

/// One evicted task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The task.
    pub id: TaskId,
    /// Its content length.
    pub bytes: u64,
    /// Its last access (unix ms).
    pub last_access: u64,
    /// Why it went.
    pub reason: EvictionReason,
}

/// What a GC run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    /// Evicted tasks, in eviction order.
    pub evicted: Vec<Eviction>,
    /// Sum of the evicted tasks' content lengths.
    pub bytes_freed: u64,
    /// Stored bytes after the run (not counting incoming bytes).
    pub usage_bytes: u64,
    /// Filesystem used percent after the run (with incoming bytes), when a percent is set.
    pub disk_used_percent: Option<f64>,
    /// Tasks that would have been evicted but were in use or running.
    pub skipped: Vec<TaskId>,
    /// Whether usage ended within the quota and the disk percent.
    pub target_reached: bool,
}

impl GcReport {
    fn skip(&mut self, id: &TaskId) {
        if !self.skipped.contains(id) {
            self.skipped.push(id.clone());
        }
    }
}

impl Storage {
    /// Runs GC. `in_use` says whether a task is being downloaded or served (such tasks are never
    /// evicted; it is called with the storage's structure lock held, so it must not call back
    /// into `create_task`, `delete_task` or `gc`). `incoming_bytes` is room to make for a task
    /// about to be created.
    pub fn gc(
        &self,
        policy: &GcPolicy,
        in_use: &dyn Fn(&TaskId) -> bool,
        incoming_bytes: u64,
    ) -> Result<GcReport> {
        let dir = self.inner.dir.clone();
        self.gc_with_disk(policy, in_use, incoming_bytes, &move || DiskUsage::of(&dir))
    }

    /// [`Storage::gc`] with an injected filesystem probe, for tests.
    #[doc(hidden)]
    pub fn gc_with_disk(
        &self,
        policy: &GcPolicy,
        in_use: &dyn Fn(&TaskId) -> bool,
        incoming_bytes: u64,
        disk: &dyn Fn() -> Result<DiskUsage>,
    ) -> Result<GcReport> {
        let now = self.inner.now();
        let ttl_ms = u64::try_from(policy.task_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut tasks = self.tasks()?;
        // Least recently accessed first; ties by age, then id, so runs are deterministic.
        tasks.sort_by(|a, b| {
            (a.last_access, a.created_at, &a.id).cmp(&(b.last_access, b.created_at, &b.id))
        });
        let mut report = GcReport::default();
        let mut usage: u64 = tasks
            .iter()
            .map(TaskRecord::stored_bytes)
            .fold(0, u64::saturating_add);
        let mut remaining = Vec::with_capacity(tasks.len());

        for task in tasks {
            let expired = ttl_ms > 0 && now.saturating_sub(task.last_access) > ttl_ms;
            if expired && self.evict(&task, EvictionReason::Expired, in_use, &mut report)? {
                usage = usage.saturating_sub(task.stored_bytes());
            } else {
                remaining.push(task);
            }
        }

        let over_quota = |usage: u64| {
            policy
                .quota_bytes
                .is_some_and(|q| usage.saturating_add(incoming_bytes) > q)
        };
        let disk_percent = || -> Result<Option<f64>> {
            match policy.disk_used_percent {
                Some(_) => Ok(Some(disk()?.used_percent_with(incoming_bytes))),
                None => Ok(None),
            }
        };
        let over_disk = |percent: Option<f64>| matches!((percent, policy.disk_used_percent), (Some(p), Some(limit)) if p > limit);

        let mut percent = disk_percent()?;
        for task in &remaining {
            let reason = if over_quota(usage) {
                EvictionReason::Quota
            } else if over_disk(percent) {
                EvictionReason::DiskUsage
            } else {
                break;
            };
            if self.evict(task, reason, in_use, &mut report)? {
                usage = usage.saturating_sub(task.stored_bytes());
                percent = disk_percent()?;
            }
        }

        report.usage_bytes = usage;
        report.disk_used_percent = percent;
        report.target_reached = !over_quota(usage) && !over_disk(percent);
        if !report.evicted.is_empty() || !report.target_reached {
            tracing::info!(
                evicted = report.evicted.len(),
                bytes_freed = report.bytes_freed,
                usage_bytes = usage,
                target_reached = report.target_reached,
                "storage gc"
            );
        }
        Ok(report)
    }

    /// Whether `needed` more bytes for `task` can be stored at all, were every other stored
    /// task gone: within `quota_bytes` when one is set, and within the disk's free space plus
    /// the other tasks' bytes. Tasks running or in use count as room (they finish and become
    /// evictable); what this refuses cannot fit whatever happens. Evicts nothing; a claim that
    /// cannot fit is [`StorageError::NoRoom`], so no stored task is lost for a download that
    /// would fail.
    pub fn room_for(&self, task: &TaskId, policy: Option<&GcPolicy>, needed: u64) -> Result<()> {
        let dir = self.inner.dir.clone();
        self.room_for_with_disk(task, policy, needed, &move || DiskUsage::of(&dir))
    }

    /// [`Storage::room_for`] with an injected filesystem probe, for tests.
    #[doc(hidden)]
    pub fn room_for_with_disk(
        &self,
        task: &TaskId,
        policy: Option<&GcPolicy>,
        needed: u64,
        disk: &dyn Fn() -> Result<DiskUsage>,
    ) -> Result<()> {
        let no_room = |room: u64, limit: String| StorageError::NoRoom {
            task: task.clone(),
            needed,
            room,
            limit,
        };
        if let Some(quota) = policy.and_then(|p| p.quota_bytes)
            && needed > quota
        {
            return Err(no_room(
                quota,
                format!("storage.diskGCThreshold is {}", bytesize::ByteSize(quota)),
            ));
        }
        let free = disk()?.available_bytes;
        if needed <= free {
            return Ok(());
        }
        let others: u64 = self
            .tasks()?
            .iter()
            .filter(|t| &t.id != task)
            .map(TaskRecord::stored_bytes)
            .fold(0, u64::saturating_add);
        let room = free.saturating_add(others);
        if needed > room {
            return Err(no_room(
                room,
                format!(
                    "{} free on the disk of {}",
                    bytesize::ByteSize(free),
                    self.inner.dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// Evicts one task unless it is in use or running; whether it went.
    fn evict(
        &self,
        task: &TaskRecord,
        reason: EvictionReason,
        in_use: &dyn Fn(&TaskId) -> bool,
        report: &mut GcReport,
    ) -> Result<bool> {
        let _structure = lock(&self.inner.structure);
        if task.state == TaskState::Running || in_use(&task.id) {
            report.skip(&task.id);
            return Ok(false);
        }
        // The state is checked again inside the delete transaction: the task may have been
        // started since the list was read.
        match self
            .inner
            .delete_locked(&task.id, |current| current.state != TaskState::Running)?
        {
            Deleted::Removed(record) => {
                tracing::debug!(task_id = %record.id, ?reason, bytes = record.content_length, "evicted");
                report.bytes_freed = report.bytes_freed.saturating_add(record.stored_bytes());
                report.evicted.push(Eviction {
                    id: record.id,
                    bytes: record.content_length,
                    last_access: record.last_access,
                    reason,
                });
                Ok(true)
            }
            Deleted::Refused => {
                report.skip(&task.id);
                Ok(false)
            }
            // Deleted by someone else meanwhile: its bytes are gone all the same.
            Deleted::Absent => Ok(true),
        }
    }
}
