//! 32 distinct PNG bombs at once — 7000×7000 16-bit RGBA, a few hundred KB each, 392 MB of
//! pixels each once inflated — uploaded to the real binary running with its default
//! memory settings and workers on. Its peak resident memory stays under 1 GiB, every job
//! is scored, and the server stays ready. The server runs as its own process, so that its
//! peak memory (`VmHWM`) is its own.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BOMBS: usize = 32;
const SIDE: u32 = 7000;
/// 16-bit RGBA, plus the filter byte that starts each row.
const ROW_BYTES: usize = SIDE as usize * 8 + 1;
/// Rows of seeded noise at the top of each bomb; the rest are transparent black.
const NOISE_ROWS: usize = 2;
const PEAK_BOUND_BYTES: u64 = 1 << 30;

/// The deflate stream of the rows every bomb shares (all zero), made once with the `png`
/// encoder: its zlib stream without header and checksum.
fn shared_zero_rows() -> Vec<u8> {
    let rows = SIDE - NOISE_ROWS as u32;
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, SIDE, rows);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Sixteen);
    encoder.set_compression(png::Compression::Balanced);
    encoder.set_filter(png::Filter::NoFilter);
    let mut writer = encoder.write_header().unwrap();
    let mut stream = writer.stream_writer().unwrap();
    let zeros = vec![0u8; ROW_BYTES - 1];
    for _ in 0..rows {
        std::io::Write::write_all(&mut stream, &zeros).unwrap();
    }
    stream.finish().unwrap();
    drop(writer);
    let zlib = idat_data(&png);
    zlib[2..zlib.len() - 4].to_vec()
}

/// The concatenated data of a PNG's IDAT chunks.
fn idat_data(png: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut at = 8;
    while at + 8 <= png.len() {
        let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if &png[at + 4..at + 8] == b"IDAT" {
            data.extend_from_slice(&png[at + 8..at + 8 + length]);
        }
        at += 12 + length;
    }
    data
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Bomb `seed`: rows of noise drawn from the seed, stored uncompressed, then the shared
/// zero rows; so every bomb has other pixels, and other bytes.
fn bomb(seed: u32, shared_zero_rows: &[u8]) -> Vec<u8> {
    const MODULUS: u32 = 65521;
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut zlib = vec![0x78, 0x01];
    let (mut a, mut b) = (1u32, 0u32);
    for _ in 0..NOISE_ROWS {
        let mut row = vec![0u8; ROW_BYTES];
        for byte in &mut row[1..] {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *byte = state as u8;
        }
        for &byte in &row {
            a = (a + u32::from(byte)) % MODULUS;
            b = (b + a) % MODULUS;
        }
        // A stored deflate block, not the last: header bits, then length and its complement.
        zlib.push(0);
        zlib.extend_from_slice(&(row.len() as u16).to_le_bytes());
        zlib.extend_from_slice(&(!(row.len() as u16)).to_le_bytes());
        zlib.extend_from_slice(&row);
    }
    zlib.extend_from_slice(shared_zero_rows);
    // Adler-32 over the zero rows: `a` stays, `b` grows by `a` for each byte.
    let zeros = ((SIDE as u64) - NOISE_ROWS as u64) * ROW_BYTES as u64;
    b = ((u64::from(b) + zeros % u64::from(MODULUS) * u64::from(a)) % u64::from(MODULUS)) as u32;
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&SIDE.to_be_bytes());
    header.extend_from_slice(&SIDE.to_be_bytes());
    header.extend_from_slice(&[16, 6, 0, 0, 0]); // 16-bit RGBA, not interlaced
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// The binary with a fresh data folder and its defaults: nothing inherited from the
/// caller's environment that would change them.
fn platescore(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_platescore"));
    for (var, _) in std::env::vars() {
        if var.starts_with("PLATESCORE_") || var == "DATABASE_URL" || var == "ORT_DYLIB_PATH" {
            command.env_remove(var);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env("PLATESCORE_DATA_DIR", data_dir)
        .env("PLATESCORE_LISTEN", "127.0.0.1:0");
    command
}

/// The first partner's key and the base URL, from the first-start banner; stderr is
/// drained on a thread from then on.
fn key_and_base(child: &mut Child) -> (String, String) {
    let stderr = child.stderr.take().unwrap();
    let (found, banner) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let (false, Some(start)) = (sent, line.find("Bearer psk_")) {
                let rest = &line[start + "Bearer ".len()..];
                let key = rest[..rest.find('\'').unwrap()].to_string();
                let url = line
                    .split_whitespace()
                    .find(|w| w.starts_with("http://"))
                    .unwrap()
                    .trim_end_matches("/enqueue")
                    .to_string();
                let _ = found.send((key, url));
                sent = true;
            }
        }
    });
    banner
        .recv_timeout(Duration::from_secs(120))
        .expect("the first start prints a key")
}

/// Peak resident memory of a process so far, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn thirty_two_png_bombs_at_once_stay_under_1_gib_and_are_all_scored() {
    let started = Instant::now();
    let shared = shared_zero_rows();
    let bombs: Vec<Vec<u8>> = (0..BOMBS as u32).map(|seed| bomb(seed, &shared)).collect();
    for bomb in &bombs {
        assert!(bomb.len() < 1 << 20, "a bomb of {} bytes", bomb.len());
    }
    let bomb_bytes = bombs[0].len();
    // A real PNG: its header says 7000×7000 16-bit RGBA, and every row inflates.
    let mut reader = png::Decoder::new(std::io::Cursor::new(&bombs[0][..]))
        .read_info()
        .unwrap();
    assert_eq!(reader.info().size(), (SIDE, SIDE));
    assert_eq!(reader.info().bit_depth, png::BitDepth::Sixteen);
    let mut rows = 0;
    while reader.next_row().unwrap().is_some() {
        rows += 1;
    }
    assert_eq!(rows, SIDE);
    let generated = started.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let mut child = platescore(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (key, base) = key_and_base(&mut child);
    let server = Server(child);
    let pid = server.0.id();
    let at_rest = peak_rss(pid);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let uploading = Instant::now();
    let job_ids: Vec<String> = runtime.block_on(async {
        let uploads = bombs.into_iter().enumerate().map(|(i, bomb)| {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            tokio::spawn(async move {
                let form = reqwest::multipart::Form::new().part(
                    "image",
                    reqwest::multipart::Part::bytes(bomb).file_name(format!("bomb{i}.png")),
                );
                let response = client
                    .post(format!("{base}/enqueue"))
                    .bearer_auth(&key)
                    .multipart(form)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                let job: serde_json::Value = response.json().await.unwrap();
                job["job_id"].as_str().unwrap().to_string()
            })
        });
        let mut ids = Vec::new();
        for upload in uploads.collect::<Vec<_>>() {
            ids.push(upload.await.unwrap());
        }
        ids
    });

    let deadline = Instant::now() + Duration::from_secs(300);
    let jobs = runtime.block_on(async {
        loop {
            let response = client
                .post(format!("{base}/status"))
                .bearer_auth(&key)
                .json(&serde_json::json!({ "job_ids": job_ids }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            let jobs = body["jobs"].as_array().unwrap().clone();
            let finished = jobs
                .iter()
                .filter(|job| matches!(job["status"].as_str(), Some("succeeded" | "failed")))
                .count();
            if finished == BOMBS {
                return jobs;
            }
            assert!(
                Instant::now() < deadline,
                "{finished} of {BOMBS} jobs finished in time"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let processed = uploading.elapsed();
    let peak = peak_rss(pid);

    for job in &jobs {
        // Decoded under the budget, not refused: each is scored (a blank, white photo).
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    runtime.block_on(async {
        let ready = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    });
    eprintln!(
        "png bombs: peak RSS {} MiB (at rest {} MiB); {BOMBS} bombs of {} KB generated in \
         {generated:.1?}, uploaded and scored in {processed:.1?}, {:.1?} in all",
        peak >> 20,
        at_rest >> 20,
        bomb_bytes / 1000,
        started.elapsed()
    );
    assert!(
        peak <= PEAK_BOUND_BYTES,
        "peak RSS {} MiB, over the bound of {} MiB",
        peak >> 20,
        PEAK_BOUND_BYTES >> 20
    );
}
