use super::*;
use crate::reference::{Verdict, verdict};

fn check_in(model: &str, text: &[u8], piece: usize) -> Result<(), String> {
    let mut c = Checker::new(profile_for(Some(model)));
    for p in text.chunks(piece.max(1)) {
        c.feed(p)?;
    }
    c.finish()
}

fn s5(text: &[u8]) -> Result<(), String> {
    check_in("Ultimaker S5", text, 7)
}

/// The checker and the reference give the same verdict (the checker's message names
/// the line the reference refuses).
fn agree(profile: Profile, text: &[u8], piece: usize) {
    let mut c = Checker::new(profile);
    let got = text
        .chunks(piece.max(1))
        .try_for_each(|p| c.feed(p))
        .and_then(|()| c.finish());
    let expected = verdict(profile, text);
    match (&got, expected) {
        (Ok(()), Verdict::Accepted) => {}
        (Err(m), Verdict::RefusedAt(line)) if m.starts_with(&format!("line {line}:")) => {}
        (Err(m), Verdict::NoCommand) if m.starts_with("the file holds no") => {}
        _ => panic!(
            "checker {got:?} but reference {expected:?} for {:?}",
            String::from_utf8_lossy(text)
        ),
    }
}

#[test]
fn ordinary_gcode_passes_in_any_pieces() {
    let g =
        b";FLAVOR:Griffin\nM104 S210 ; heat\nM140 S60\nN12 M109 R215*57\nG1 X10 Y10 E1.5\nM190 S60";
    for piece in [1, 3, 1000] {
        assert_eq!(check_in("Ultimaker S5", g, piece), Ok(()));
    }
}

#[test]
fn what_slicers_write_passes() {
    let files: &[&[u8]] = &[
        // Cura (Griffin flavour).
        b";FLAVOR:Griffin\n;TIME:6666\nT0\nM82 ;absolute extrusion mode\nG92 E0\nM109 S200\nG280 S1\nG0 F3600 X10 Y10 Z0.3\n;LAYER:0\nM107\nG1 F1500 E-6.5\nG1 F600 X11.5 Y12 E0.02\nM106 S255\nM104 S0\nM140 S0\nM82\n",
        // PrusaSlicer (Marlin), with its printer check and placeholders already expanded.
        b"M73 P0 R12\nM862.3 P \"MK3S\" ; printer model check\nM862.1 P0.4 ; nozzle diameter check\nM115 U3.9.0\nM104 S215 ; set extruder temp\nM140 S60 ; set bed temp\nM190 S60 ; wait for bed temp\nM109 S215 ; wait for extruder temp\nG28 W ; home all without mesh bed level\nG1 Z.2 F7800\nG1 X10.5Y20 E.0123\nM204 S1000\nM221 S100\nG4 S10\n",
        // OrcaSlicer or PrusaSlicer for Klipper.
        b"EXCLUDE_OBJECT_DEFINE NAME=cube_id_0_copy_0 CENTER=125.5,105 POLYGON=[[115,95],[136,95],[136,115],[115,115]]\nPRINT_START BED=60 EXTRUDER=210 CHAMBER=0\nSET_PRESSURE_ADVANCE ADVANCE=0.04\nSET_HEATER_TEMPERATURE HEATER=extruder TARGET=215\nTEMPERATURE_WAIT SENSOR=extruder MINIMUM=210\nEXCLUDE_OBJECT_START NAME=cube_id_0_copy_0\nG1 X1 Y1 E1\nEXCLUDE_OBJECT_END NAME=cube_id_0_copy_0\nPRINT_END\n",
        // RepRapFirmware: tool temperatures, offsets, a retraction.
        b"G10 P0 S200 R150\nM568 P0 S205:210 R150 A2\nT0\nG10 L2 P1 X0 Y0\nG10\nM116\nM140 S60 R40\nM141 S40\n",
    ];
    for f in files {
        assert_eq!(
            check_in("Ultimaker S5", f, 5),
            Ok(()),
            "{}",
            String::from_utf8_lossy(f)
        );
        agree(profile_for(Some("Ultimaker S5")), f, 5);
    }
}

#[test]
fn refusals_name_the_line() {
    assert_eq!(
        check_in("Ultimaker S5", b"G28\nM104 S300\n", 4),
        Err(
            "line 2: M104 S300 sets the nozzle to 300 °C; the Ultimaker S5 allows at most 280 °C"
                .into()
        )
    );
    assert!(
        s5(b"G28\nG1 X1\nm190 s150\n")
            .unwrap_err()
            .starts_with("line 3: M190 S150 sets the bed")
    );
    // The S5's bed may be 140 °C, an unknown model's not.
    assert!(s5(b"M140 S130\n").is_ok());
    assert!(check_in("Acme 3000", b"M140 S130\n", 100).is_err());
    assert!(
        s5(b"G28\n\0\n")
            .unwrap_err()
            .starts_with("line 2: contains a NUL")
    );
    assert!(
        check_in("Ultimaker S5", b"G28\nG1 ; \xff\xfe\n", 1)
            .unwrap_err()
            .starts_with("line 2: is not UTF-8")
    );
    let long = vec![b'G'; MAX_LINE + 1];
    assert!(s5(&long).unwrap_err().starts_with("line 1: longer than"));
    assert!(
        s5(b"M104 Shot\n")
            .unwrap_err()
            .contains("not a plain number")
    );
    assert!(s5(b"M104 Sinf\n").is_err());
    assert!(s5(b"M104 SNaN\n").is_err());
}

#[test]
fn a_file_without_a_command_is_refused() {
    for empty in [
        &b""[..],
        b"\n\n",
        b"; only a comment\n;another\n",
        b"   \r\n",
        b"N10\n",
    ] {
        assert_eq!(
            s5(empty),
            Err("the file holds no G-code command (it is empty, or only comments)".into()),
            "{:?}",
            String::from_utf8_lossy(empty)
        );
    }
}

/// Every class of over-temperature command the review found, and their kin: each is
/// refused, however it is spelled, wherever a firmware would run it.
#[test]
fn what_some_firmware_would_run_as_over_temperature_is_refused() {
    let hot: &[&[u8]] = &[
        // Spelling.
        b"M104S300\n",
        b"M 104 S 300\n",
        b"M0104 S300\n",
        b"m109 r300\n",
        b"N7 M104 S300*33\n",
        b"M104 S 300\n",
        // Other line endings: a lone CR ends the line for Marlin and OctoPrint.
        b"G28\rM104 S300\n",
        b"M104 S200\rM104 S300\n",
        // Comments a firmware ends earlier or does not know.
        b"M104 S200 (S300)\n",
        b"M140 (bed) S160\n",
        b"M104 S200 # S300\n",
        b"M117 \"hi;\" M104 S300\n",
        b"M104 S200 \\; S300\n",
        // Numbers in forms strtod or Python's float() take.
        b"M104 S3e2\n",
        b"M104 S0x12C\n",
        b"M104 S+300\n",
        b"M104 S.3e3\n",
        b"M104 S-65236\n",
        b"M104 S65836\n",
        b"M104 S\xd9\xa3\xd9\xa0\xd9\xa0\n",
        b"M104 \xc5\xbf300\n",
        // A parameter given twice: Marlin and Klipper take the last, RRF the first.
        b"M104 S200 S300\n",
        // A second command on the line: RepRapFirmware runs it; Marlin reads its words
        // as the first command's.
        b"M104 S200 M140 S300\n",
        b"G1 X1 M104 S300\n",
        b"XM104 S300\n",
        b"M117 \"hi\" M104 S300\n",
        b"G1 X1 m104 S200\n",
        // Heating commands beyond M104/M109/M140/M190.
        b"M303 E0 S300 C8\n",
        b"M303 E-1 S150\n",
        b"G10 P0 S300 R200\n",
        b"M568 P0 S200:300\n",
        b"M104 B300\n",
        b"M109 R300\n",
        b"M141 S80\n",
        b"G26 H300\n",
        b"M104 I1\n",
        b"M140 H1 S60\n",
        b"M104.1 S200\n",
        // Commands that raise limits or run what the cloud cannot see.
        b"M143 H1 S400\n",
        b"M570 H1 P300\n",
        b"M98 P\"heat.g\"\n",
        b"M23 hot.gco\n",
        b"M810 M104 S300\n",
        b"M149 F\n",
        b"M500\n",
        // RepRapFirmware meta commands and expressions.
        b"if true\n",
        b"var hot = 300\n",
        b"M104 S{300}\n",
        // Klipper.
        b"SET_HEATER_TEMPERATURE HEATER=extruder TARGET=300\n",
        b"set_heater_temperature heater=heater_bed target=160\n",
        b"N12 SET_HEATER_TEMPERATURE HEATER=extruder TARGET=300\n",
        b"SET_HEATER_TEMPERATURE HEATER=\"extruder\" TARGET=300\n",
        b"SET_HEATER_TEMPERATURE HEATER=extruder TARGET=200 TARGET=300\n",
        b"SET_HEATER_TEMPERATURE HEATER=extruder target=200 TARGET=300\n",
        b"SET_HEATER_TEMPERATURE HEATER=extruder MSG=\";\" TARGET=300\n",
        b"SET_HEATER_TEMPERATURE HEATER=extruder TARGET=300#x\n",
        b"SET_HEATER_TEMPERATURE HEATER=extruder TARGET=nan\n",
        b"SET_HEATER_TEMPERATURE HEATER=extruder TARGET=3_00\n",
        b"SET_HEATER_TEMPERATURE HEATER=chamber TARGET=300\n",
        b"PID_CALIBRATE HEATER=extruder TARGET=300\n",
        b"TUNING_TOWER COMMAND=SET_HEATER_TEMPERATURE PARAMETER=TARGET START=200 FACTOR=10\n",
        b"SET_GCODE_VARIABLE MACRO=heat VARIABLE=temp VALUE=300\n",
        b"PRINT_START BED=60 EXTRUDER=300\n",
        b"PRINT_START BED_TEMP=160\n",
        b"PRINT_START HOTEND_TEMP=3e2\n",
        b"PRINT_START BED=60 M104 S200\n",
        // Stray checksums.
        b"M104 S200 *57\n",
        // Found by the second review: a Klipper command's parameters past a `G1` or
        // `M1` inside a value; M303's heater read as Marlin reads it; numbers that wrap;
        // a line that starts with a quote; commands that print another file or
        // reconfigure a sensor.
        b"SET_HEATER_TEMPERATURE HEATER=extruder X=G1 TARGET=300\n",
        b"PRINT_START A=xM1 BED_TEMP=160\n",
        b"M303 E-01 S250 C8\n",
        b"M303 E-1.0 S250\n",
        b"M303 E-2 S200\n",
        b"M303 E-3 S200\n",
        // Found by the fuzzer: a heater M303 cannot tune, with no temperature given.
        b"M303 E-303\n",
        b"M65640 S300\n",
        b"M4294967400 S300\n",
        b"\"M104 S300 X\"\n",
        b"SDCARD_PRINT_FILE FILENAME=other.gcode\n",
        b"M305 P1 T100000\n",
    ];
    for line in hot {
        let mut file = b"G28\n".to_vec();
        file.extend_from_slice(line);
        let err = s5(&file).expect_err(&String::from_utf8_lossy(line));
        assert!(err.starts_with("line 2: "), "{err}");
        agree(profile_for(Some("Ultimaker S5")), &file, 3);
    }
}

#[test]
fn odd_but_harmless_lines_pass() {
    for fine in [
        &b"M104\n"[..],
        b"G1 X-1.5e1\n",
        b"G1 X10.5Y20\n",
        b"T1\n",
        b"M106 S255\n",
        b"G4 S300\n",
        b"M104 S200 T1 ; tool 1\n",
        b"M104 S0.5\n",
        b"M303 E-1 S130 C8\n",
        b"PRINT_START EXTRUDER=extruder1 BED_MESH=default\n",
        b"EXCLUDE_OBJECT_DEFINE NAME=M3_screw_id_0 CENTER=1,2\n",
        b"M303 E0 S250 C8\n",
        b"G28 ; a comment with\ta tab and \xc3\xa9\n",
        b"M117 Printing layer 3\n",
    ] {
        assert_eq!(s5(fine), Ok(()), "{}", String::from_utf8_lossy(fine));
        agree(profile_for(Some("Ultimaker S5")), fine, 2);
    }
}

/// A small deterministic generator of G-code-like lines from fragments that the
/// firmware treat specially, for the checker and the reference to judge alike.
#[test]
fn the_checker_and_the_reference_agree_on_generated_files() {
    const FRAGMENTS: &[&[u8]] = &[
        b"M104",
        b"M109",
        b"M140",
        b"G10",
        b"M568",
        b"M303",
        b"G26",
        b"M143",
        b"G1",
        b"T0",
        b"SET_HEATER_TEMPERATURE",
        b"PRINT_START",
        b"N12",
        b" ",
        b" ",
        b" ",
        b"S",
        b"R",
        b"B",
        b"H",
        b"E",
        b"P",
        b"T",
        b"I",
        b"200",
        b"300",
        b"3e2",
        b"-1",
        b"0.5",
        b":",
        b".",
        b"=",
        b"HEATER=",
        b"TARGET=",
        b"extruder",
        b"heater_bed",
        b"BED",
        b"\"",
        b";",
        b"(",
        b")",
        b"*",
        b"57",
        b"\r",
        b"\n",
        b"\n",
        b"\n",
        b"\t",
        b"if",
        b"M",
        b"G",
        b"m",
        b"0",
        b"\xc3\xa9",
        b"\xff",
        b"#",
        b"{",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let mut file = Vec::new();
        for _ in 0..(next() % 24) {
            file.extend_from_slice(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
        }
        let profile = PROFILES[(next() % PROFILES.len() as u64) as usize];
        agree(profile, &file, (next() % 9 + 1) as usize);
    }
}

#[test]
fn the_benchmarks_sample_has_its_size_and_passes() {
    for bytes in [4096, 100_000, 1 << 20] {
        let text = crate::sample::sample(bytes);
        assert_eq!(text.len(), bytes);
        assert_eq!(check(profile_for(Some("Ultimaker S5")), &text), Ok(()));
    }
}
