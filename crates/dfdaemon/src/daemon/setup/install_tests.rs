//! Unit tests of the file side: atomic writes with modes, backups kept, the manifest format.

use super::*;

#[test]
fn atomic_writes_set_the_exact_mode_and_leave_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    for mode in [0o600, 0o644, 0o640] {
        write_atomic(&p, b"x = 1\n", mode, None).unwrap();
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, mode, "{m:o}");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["config.toml"]);
}

#[test]
fn a_backup_already_there_is_never_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("etc/hosts.toml");
    let backups = root.path().join("backups");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "newer\n").unwrap();
    // Left by a run that stopped before writing its manifest: the older original.
    let copy = backups.join(backup_relative(&file));
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::write(&copy, "older\n").unwrap();
    let planned = [Planned {
        path: file.clone(),
        data: b"ours\n".to_vec(),
        mode: Some(0o644),
        kind: Kind::HostsToml,
    }];
    let out = apply(&planned, Some(&backups), false).unwrap();
    assert_eq!(
        out.events,
        [
            Event::BackedUp {
                path: file.clone(),
                to: copy.clone()
            },
            Event::Wrote(file.clone()),
        ]
    );
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "older\n");
    let manifest = Manifest::load(&backups).unwrap().unwrap();
    assert_eq!(manifest.version, 1);
    assert_eq!(manifest.files[0].sha256, sha256_hex(b"ours\n"));
    assert_eq!(
        manifest.files[0]
            .original
            .as_ref()
            .map(|o| o.backup.clone()),
        Some(backup_relative(&file))
    );
}

#[test]
fn a_missing_backup_fails_the_restore_before_anything_changes() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a.toml");
    let b = root.path().join("b.toml");
    let backups = root.path().join("backups");
    std::fs::write(&a, "a0\n").unwrap();
    std::fs::write(&b, "b0\n").unwrap();
    let planned: Vec<Planned> = [&a, &b]
        .iter()
        .map(|p| Planned {
            path: p.to_path_buf(),
            data: b"ours\n".to_vec(),
            mode: Some(0o644),
            kind: Kind::HostsToml,
        })
        .collect();
    apply(&planned, Some(&backups), false).unwrap();
    let copy_b = backups.join(backup_relative(&b));
    std::fs::remove_file(&copy_b).unwrap();
    let err = restore(&backups).unwrap_err();
    assert!(
        matches!(&err, SetupError::Read { path, .. } if *path == copy_b),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        "ours\n",
        "a untouched"
    );
    assert!(backups.join(MANIFEST).exists());
}
