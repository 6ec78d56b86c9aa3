//! Backups (`printworks backup create | list | restore`): a database filled through the
//! API, backed up, restored into a new database, served again — people sign in, the
//! printer reconnects with its old certificate and prints the job that was queued, the
//! audit log verifies — and a tampered, truncated or foreign backup is refused without
//! writing anything.

use printworks::backup::{self, Listed};
use printworks_common::Settings;
use printworks_common::clock::{Clock as _, SystemClock};
use printworks_common::db::MIGRATOR;
use printworks_common::settings::MasterKey;
use printworks_relay::blob::LocalStore;
use reqwest::StatusCode;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions as _, PgPool};

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp, TestPrinter, test_settings};
use crate::relay::agent::{WITHIN, start_agent};
use crate::relay::gcode;

fn backup_key() -> MasterKey {
    MasterKey::from_bytes([0x42; 32])
}

/// A new, empty database beside the test's own (the test database's name is as long as
/// a name may be, so this one has its own).
pub async fn scratch_database(pool: &PgPool, purpose: &str) -> (PgPool, String) {
    let name = format!("printworks_{purpose}_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    let options = pool.connect_options().as_ref().clone().database(&name);
    let target = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await
        .unwrap();
    (target, name)
}

pub async fn drop_database(pool: &PgPool, target: PgPool, name: &str) {
    target.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(pool)
    .await
    .unwrap();
}

async fn table_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A deployment with people, an organization, a paired printer (offline) and a job
/// queued for it; its data directory outlives the app.
struct Filled {
    app: TestApp,
    dir: tempfile::TempDir,
    world: OrgWorld,
    printer: TestPrinter,
    job: uuid::Uuid,
}

async fn filled(pool: &PgPool) -> Filled {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().to_path_buf();
    let app = TestApp::spawn_with(pool.clone(), &printworks::ServiceSet::all(), move |s| {
        s.data_dir = shared;
    })
    .await;
    let world = OrgWorld::new(&app).await;
    let token = app.access_token(&world.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, world.org, "SN-BACKUP").await;
    let job = app
        .submit_gcode(&token, printer.id, "kept.gcode", gcode(300))
        .await
        .expect(StatusCode::CREATED)
        .id();
    Filled {
        app,
        dir,
        world,
        printer,
        job,
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_restored_backup_serves_people_printers_and_queued_jobs(pool: PgPool) {
    let f = filled(&pool).await;
    let store = LocalStore::new(&f.dir.path().join("blobs")).unwrap();
    let key = backup_key();
    let m = backup::create(&pool, &store, &key, f.app.now())
        .await
        .unwrap();
    let rows = |table: &str| {
        m.tables
            .iter()
            .find(|t| t.table == table)
            .map(|t| t.rows)
            .unwrap_or_else(|| panic!("{table} is not in the backup"))
    };
    assert_eq!(rows("print_jobs"), 1);
    assert_eq!(rows("printers"), 1);
    assert!(rows("users") >= 4 && rows("audit_events") > 10, "{m:?}");
    assert!(!m.audit_heads.is_empty());
    assert!(m.master_key_id.is_some(), "the key the secrets inside need");
    assert!(
        format!("{m:?}").contains("DataKey(..)"),
        "the data key is never shown"
    );
    // The plaintext is not in the store: the data is sealed.
    let data = std::fs::read(f.dir.path().join(format!("blobs/backups/{}/data", m.id))).unwrap();
    assert!(
        !data
            .windows(f.world.admin.email.len())
            .any(|w| w == f.world.admin.email.as_bytes()),
        "an e-mail address in the clear"
    );

    // What happens after the backup is not in it.
    let after = f.app.new_org(&f.world.admin, "Made after the backup").await;
    let Filled {
        app,
        dir,
        world,
        mut printer,
        job,
    } = f;
    app.stop().await.unwrap();

    let (target, name) = scratch_database(&pool, "restored").await;
    let settings = test_settings(dir.path());
    let restored = backup::restore(&target, &store, &key, m.id, &settings, SystemClock.now())
        .await
        .unwrap();
    assert!(
        !restored.audit.is_empty() && restored.audit.iter().all(|v| v.ok),
        "{:?}",
        restored.audit
    );

    let shared = dir.path().to_path_buf();
    let b = TestApp::spawn_with(target.clone(), &printworks::ServiceSet::all(), move |s| {
        s.data_dir = shared;
    })
    .await;
    // People sign in with their passwords.
    let admin = b.relogin(&world.admin).await;
    let token = b.access_token(&admin, ALL_SCOPES).await;
    b.call(
        reqwest::Method::GET,
        &format!("/org/v1/organizations/{}", world.org),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::OK);
    b.call(
        reqwest::Method::GET,
        &format!("/org/v1/organizations/{after}"),
        Some(&token),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    // The printer connects with the certificate it was given before the backup and
    // prints the job that was queued for it.
    printer.printer_url = format!("https://{}", b.printer_addr.unwrap());
    let agent_dir = tempfile::tempdir().unwrap();
    let stop = start_agent(&b, &printer, &agent_dir.path().join("p"));
    b.wait_for_job(&token, job, "completed", WITHIN).await;
    stop.cancel();
    b.stop().await.unwrap();

    // `printworks audit verify` on the restored database.
    let out = crate::binary::printworks(dir.path())
        .env(
            "DATABASE_URL",
            target.connect_options().to_url_lossy().as_str(),
        )
        .env("PRINTWORKS_LOG", "warn")
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop_database(&pool, target, &name).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn altered_truncated_or_foreign_backups_are_refused_and_nothing_is_written(pool: PgPool) {
    let f = filled(&pool).await;
    let store = LocalStore::new(&f.dir.path().join("blobs")).unwrap();
    let key = backup_key();
    let settings = test_settings(f.dir.path());
    let now = f.app.now();
    let m = backup::create(&pool, &store, &key, now).await.unwrap();
    let data_path = f.dir.path().join(format!("blobs/backups/{}/data", m.id));
    let manifest_path = f
        .dir
        .path()
        .join(format!("blobs/backups/{}/manifest", m.id));
    let original = std::fs::read(&data_path).unwrap();
    let (target, name) = scratch_database(&pool, "refused").await;
    // A restore of this backup into `db` that is refused, saying `says`.
    let refused = async |db: &PgPool, key: &MasterKey, settings: &Settings, says: &str| {
        let e = backup::restore(db, &store, key, m.id, settings, now)
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(says), "{e}");
    };

    // Into a database that is not empty.
    refused(&pool, &key, &settings, "not empty").await;
    // With another backup key.
    refused(
        &target,
        &MasterKey::from_bytes([7; 32]),
        &settings,
        "does not open with this backup key",
    )
    .await;
    // One byte changed in the middle of the data.
    let mut altered = original.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 1;
    std::fs::write(&data_path, &altered).unwrap();
    refused(&target, &key, &settings, "altered").await;
    // Cut short: no longer the size its manifest says.
    std::fs::write(&data_path, &original[..original.len() - 100]).unwrap();
    refused(&target, &key, &settings, "truncated").await;
    // Another backup's data in its place: chunks are bound to their backup's id.
    let other = backup::create(&pool, &store, &key, now).await.unwrap();
    let other_data = std::fs::read(
        f.dir
            .path()
            .join(format!("blobs/backups/{}/data", other.id)),
    )
    .unwrap();
    assert_eq!(
        other_data.len(),
        original.len(),
        "the same database, the same size"
    );
    std::fs::write(&data_path, &other_data).unwrap();
    refused(&target, &key, &settings, "altered").await;
    // Another backup's manifest in its place: it is bound to its own id.
    let other_manifest = std::fs::read(
        f.dir
            .path()
            .join(format!("blobs/backups/{}/manifest", other.id)),
    )
    .unwrap();
    let manifest = std::fs::read(&manifest_path).unwrap();
    std::fs::write(&manifest_path, &other_manifest).unwrap();
    refused(
        &target,
        &key,
        &settings,
        "does not open with this backup key",
    )
    .await;
    std::fs::write(&manifest_path, &manifest).unwrap();
    // Without the master key the secrets inside were sealed with, or with another one.
    std::fs::write(&data_path, &original).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    refused(
        &target,
        &key,
        &test_settings(elsewhere.path()),
        "no master key is configured",
    )
    .await;
    assert!(
        !elsewhere.path().join("keys/master.key").exists(),
        "none was made up"
    );
    let mut other_master = test_settings(elsewhere.path());
    other_master.master_key = Some(MasterKey::from_bytes([5; 32]));
    refused(&target, &key, &other_master, "which is not configured here").await;
    // ... unless it is configured as a previous key (a rotation since the backup).
    let master = std::fs::read(f.dir.path().join("keys/master.key")).unwrap();
    other_master.master_key_previous = vec![MasterKey::from_bytes(master.try_into().unwrap())];
    let (scratch, scratch_name) = scratch_database(&pool, "rotated").await;
    backup::restore(&scratch, &store, &key, m.id, &other_master, now)
        .await
        .unwrap();
    drop_database(&pool, scratch, &scratch_name).await;
    // An altered manifest.
    let mut bad = manifest.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&manifest_path, &bad).unwrap();
    refused(
        &target,
        &key,
        &settings,
        "does not open with this backup key",
    )
    .await;
    // Nothing was written by any refusal.
    assert_eq!(table_count(&target).await, 0);

    // Restored as it was, it restores.
    std::fs::write(&manifest_path, &manifest).unwrap();
    backup::restore(&target, &store, &key, m.id, &settings, now)
        .await
        .unwrap();
    drop_database(&pool, target, &name).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn list_shows_every_backup_and_retention_keeps_the_newest(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap();
    let key = backup_key();
    let t0 = SystemClock.now() - time::Duration::days(100);
    let old = backup::create(&pool, &store, &key, t0).await.unwrap();
    let newer = backup::create(&pool, &store, &key, t0 + time::Duration::days(10))
        .await
        .unwrap();
    // A run that stopped before its manifest.
    let stopped = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from((t0 + time::Duration::days(11)).unix_timestamp()).unwrap(),
        0,
    ));
    std::fs::create_dir_all(dir.path().join(format!("backups/{stopped}"))).unwrap();
    std::fs::write(
        dir.path().join(format!("backups/{stopped}/data")),
        b"partial",
    )
    .unwrap();
    // One taken with another key.
    let foreign = backup::create(&pool, &store, &MasterKey::from_bytes([9; 32]), t0)
        .await
        .unwrap();
    // The newest of all, whose data was lost: it must not count as the newest.
    let damaged = backup::create(&pool, &store, &key, t0 + time::Duration::days(20))
        .await
        .unwrap();
    std::fs::remove_file(dir.path().join(format!("backups/{}/data", damaged.id))).unwrap();

    let listed = backup::list(&store, &key).await.unwrap();
    let kind = |id: uuid::Uuid| {
        listed
            .iter()
            .find(|l| l.id() == id)
            .map(|l| match l {
                Listed::Complete(_) => "complete",
                Listed::Incomplete { .. } => "incomplete",
                Listed::Unreadable { .. } => "unreadable",
                Listed::Damaged { .. } => "damaged",
            })
            .unwrap_or("missing")
    };
    assert_eq!(
        [
            kind(old.id),
            kind(newer.id),
            kind(stopped),
            kind(foreign.id),
            kind(damaged.id)
        ],
        [
            "complete",
            "complete",
            "incomplete",
            "unreadable",
            "damaged"
        ]
    );

    // Thirty days' retention, 100 days on: the old one, the stopped run and the damaged
    // one go; the newest complete one stays although it is older than that; the foreign
    // one is left alone.
    let removed = backup::prune(
        &store,
        &key,
        t0 + time::Duration::days(100),
        std::time::Duration::from_secs(30 * 86_400),
    )
    .await
    .unwrap();
    assert_eq!(
        removed
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [old.id, stopped, damaged.id].into_iter().collect()
    );
    let left: Vec<_> = backup::list(&store, &key)
        .await
        .unwrap()
        .iter()
        .map(Listed::id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&newer.id) && left.contains(&foreign.id));
}

/// Backups kept in Cloud Storage (the emulator `make test` starts): taken, listed,
/// expired and restored through the store's own listing.
#[sqlx::test(migrator = "MIGRATOR")]
async fn backups_in_cloud_storage_are_listed_expired_and_restored(pool: PgPool) {
    use crate::relay::gcs::{BUCKET, endpoint};
    let f = filled(&pool).await;
    let prefix = format!("backups-{}", uuid::Uuid::new_v4().simple());
    let url = url::Url::parse(&format!("gs://{BUCKET}/{prefix}")).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let store = printworks_relay::gcs::GcsStore::new(&url, spool.path(), Some(&endpoint()))
        .await
        .unwrap();
    let key = backup_key();
    let t0 = f.app.now() - time::Duration::days(60);
    let old = backup::create(&pool, &store, &key, t0).await.unwrap();
    let new = backup::create(&pool, &store, &key, f.app.now())
        .await
        .unwrap();
    let listed: Vec<_> = backup::list(&store, &key)
        .await
        .unwrap()
        .iter()
        .map(|l| (l.id(), matches!(l, Listed::Complete(_))))
        .collect();
    assert_eq!(listed, vec![(old.id, true), (new.id, true)]);
    let removed = backup::prune(
        &store,
        &key,
        f.app.now(),
        std::time::Duration::from_secs(30 * 86_400),
    )
    .await
    .unwrap();
    assert_eq!(removed, vec![old.id]);
    let (target, name) = scratch_database(&pool, "gcs").await;
    let restored = backup::restore(
        &target,
        &store,
        &key,
        new.id,
        &test_settings(f.dir.path()),
        f.app.now(),
    )
    .await
    .unwrap();
    assert_eq!(restored.manifest.rows(), new.rows());
    drop_database(&pool, target, &name).await;
}
