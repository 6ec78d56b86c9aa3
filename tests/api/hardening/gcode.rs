//! Print files read the way firmware reads them: each class of over-temperature command
//! that passed the old checker is refused at upload, naming its line, and a file with no
//! command at all is refused; nothing of a refused upload is kept.

use printworks_common::db::MIGRATOR;
use reqwest::StatusCode;
use sqlx::PgPool;

use crate::helpers::{ALL_SCOPES, OrgWorld, TestApp};

#[sqlx::test(migrator = "MIGRATOR")]
async fn over_temperature_commands_some_firmware_would_run_cannot_be_uploaded(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let w = OrgWorld::new(&app).await;
    let token = app.access_token(&w.admin, ALL_SCOPES).await;
    let printer = app.pair_printer(&token, w.org, "SN-HOT").await;
    let classes: &[(&str, &[u8])] = &[
        ("a lone carriage return", b"M104 S200\rM104 S300"),
        (
            "a comment another firmware does not end",
            b"M104 S200 (S300)",
        ),
        (
            "a Klipper command with a line number",
            b"N12 SET_HEATER_TEMPERATURE HEATER=extruder TARGET=300",
        ),
        (
            "a quoted Klipper value",
            b"SET_HEATER_TEMPERATURE HEATER=\"extruder\" TARGET=300",
        ),
        (
            "a repeated Klipper value",
            b"SET_HEATER_TEMPERATURE HEATER=extruder TARGET=200 TARGET=300",
        ),
        ("a number strtod reads otherwise", b"M104 S3e2"),
        ("hexadecimal", b"M104 S0x12C"),
        ("PID autotune", b"M303 E0 S300 C8"),
        ("RepRapFirmware tool temperatures", b"G10 P0 S300 R200"),
        ("Marlin's autotemp maximum", b"M109 S200 B300"),
        ("a second command on the line", b"G1 X1 M104 S300"),
        ("raising the limit", b"M143 H1 S400"),
    ];
    for (what, line) in classes {
        let mut file = b";FLAVOR:Marlin\nG28\n".to_vec();
        file.extend_from_slice(line);
        file.push(b'\n');
        let res = app
            .submit_gcode(&token, printer.id, "hot.gcode", file)
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        let detail = res.body["detail"].as_str().unwrap();
        assert!(detail.starts_with("line 3: "), "{what}: {detail}");
    }
    for empty in [&b""[..], b"; just a comment\n\n;and another\n"] {
        let res = app
            .submit_gcode(&token, printer.id, "empty.gcode", empty.to_vec())
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            res.body["detail"]
                .as_str()
                .unwrap()
                .contains("holds no G-code command"),
            "{}",
            res.body
        );
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM print_jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    assert_eq!(
        crate::relay::stored_files(&app),
        Vec::<std::path::PathBuf>::new()
    );
}
