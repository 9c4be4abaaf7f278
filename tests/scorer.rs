//! The food scorer with the real model: preprocessing of awkward files, scores that make
//! sense, tips that respect diets, batching under concurrency; tract, and ONNX Runtime from
//! the library the build bundles.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use platescore::inference::{
    preprocess::{self, DecodeLimits},
    runtime::{RuntimeSettings, TractRuntime},
    DietTag, ExecutionProvider, FoodModel, ImageError, InferenceError, ModelPrecision, Precision,
    Runtime, RuntimeChoice, Scorer, ScorerSettings,
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/food-scorer")
}

fn model() -> Arc<FoodModel> {
    static MODEL: OnceLock<Arc<FoodModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(FoodModel::load(&model_dir(), Precision::Fp32).unwrap()))
        .clone()
}

fn tract() -> Arc<dyn Runtime> {
    static TRACT: OnceLock<Arc<dyn Runtime>> = OnceLock::new();
    TRACT
        .get_or_init(|| Arc::new(TractRuntime::load(&model().onnx_path, 224, 2).unwrap()))
        .clone()
}

fn settings() -> ScorerSettings {
    ScorerSettings {
        model_dir: model_dir(),
        precision: ModelPrecision::Fp32,
        runtime: RuntimeSettings {
            choice: RuntimeChoice::Tract,
            ort_library: None,
            provider: ExecutionProvider::Cpu,
            provider_fallback: false,
            threads: 2,
            tensorrt_fp16: false,
            tensorrt_cache_dir: None,
        },
        max_batch: None,
        max_wait: None,
        workers: None,
        queue_capacity: 64,
        limits: DecodeLimits::default(),
        decode_budget_bytes: 512 << 20,
    }
}

fn tract_scorer() -> Scorer {
    Scorer::with_runtime(model(), tract(), &settings(), None)
}

#[tokio::test]
async fn fruit_and_vegetables_score_4_or_more() {
    let scorer = tract_scorer();
    for name in [
        "lemon.jpg",
        "pineapple.jpg",
        "cabbage.jpg",
        "bell_pepper.jpg",
    ] {
        let scored = scorer
            .score(fixture(name).into(), &[], "en")
            .await
            .unwrap()
            .result;
        assert!(scored.is_food, "{name}: {scored:?}");
        let score = scored.score.unwrap();
        assert!(score >= 4.0, "{name} scored {score}: {:?}", scored.labels);
        assert!(
            matches!(scored.food_group.as_deref(), Some("fruit" | "vegetable")),
            "{name}: {scored:?}"
        );
        assert!(
            (1..=3).contains(&scored.tips.len()),
            "{name}: {:?}",
            scored.tips
        );
        assert!(scored.confidence > 0.5, "{name}: {scored:?}");
    }
}

#[tokio::test]
async fn a_burger_and_a_pizza_score_2_or_less() {
    let scorer = tract_scorer();
    let burger = scorer
        .score(
            fixture("awkward/large_6000x4000_hamburger.jpeg").into(),
            &[],
            "en",
        )
        .await
        .unwrap()
        .result;
    assert!(burger.is_food);
    assert_eq!(burger.labels[0].label, "cheeseburger");
    assert!(burger.score.unwrap() <= 2.0, "{burger:?}");
    assert_eq!(burger.food_group.as_deref(), Some("fast_food"));
    let pizza = scorer
        .score(fixture("pizza.jpg").into(), &[], "en")
        .await
        .unwrap()
        .result;
    assert_eq!(pizza.labels[0].label, "pizza");
    assert!(pizza.rating.unwrap() <= 2, "{pizza:?}");
}

#[tokio::test]
async fn cats_documents_and_landscapes_are_not_food() {
    let scorer = tract_scorer();
    for name in [
        "cat.jpg",
        "document.png",
        "awkward/exif_orientation6_Landscape_6.jpg",
        "flower.webp",
    ] {
        let result = scorer
            .score(fixture(name).into(), &[], "en")
            .await
            .unwrap()
            .result;
        assert!(!result.is_food, "{name}: {result:?}");
        assert_eq!(
            (result.score, result.rating, result.food_group.as_deref()),
            (None, None, None),
            "{name}"
        );
        assert!(result.tips.is_empty());
        assert_eq!(result.labels.len(), 5);
    }
}

#[tokio::test]
async fn every_awkward_file_gets_a_result_or_a_clear_error() {
    let scorer = tract_scorer();
    for name in [
        "awkward/cmyk_adobe.jpg",
        "awkward/exif_orientation6_Landscape_6.jpg",
        "awkward/large_6000x4000_hamburger.jpeg",
        "awkward/mpo_stereo_nintendo3ds.mpo",
        "awkward/webp_flower.webp",
        "awkward/interlaced_rgba16.png",
    ] {
        let scored = scorer.score(fixture(name).into(), &[], "en").await;
        assert!(scored.is_ok(), "{name}: {scored:?}");
    }
    let truncated = scorer
        .score(
            fixture("awkward/truncated_progressive.jpg").into(),
            &[],
            "en",
        )
        .await;
    match truncated {
        Err(InferenceError::Image(err @ ImageError::Corrupt(_))) => {
            assert_eq!(err.code(), "image_corrupt")
        }
        other => panic!("a truncated JPEG must be image_corrupt: {other:?}"),
    }
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 1200×1800 (portrait) with orientation 6: upright it is a landscape.
    let decoded = preprocess::decode(
        &fixture("awkward/exif_orientation6_Landscape_6.jpg"),
        256,
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(decoded.original, (1200, 1800));
    let (w, h) = decoded.rgb.dimensions();
    assert!(w > h, "{w}×{h} should be landscape once oriented");
}

#[test]
fn large_jpegs_are_decoded_at_reduced_dct_scale() {
    let decoded = preprocess::decode(
        &fixture("awkward/large_6000x4000_hamburger.jpeg"),
        256,
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(decoded.original, (6000, 4000));
    assert_eq!(decoded.dct_scale_denominator, 8);
    assert_eq!(decoded.rgb.dimensions(), (750, 500));
    // Small images are decoded at full size.
    let small = preprocess::decode(&fixture("lemon.jpg"), 256, &DecodeLimits::default()).unwrap();
    assert_eq!(small.dct_scale_denominator, 1);
}

#[test]
fn cmyk_jpegs_decode_to_the_right_colours() {
    // Red letters on black: red dominates, green and blue stay dark.
    let decoded = preprocess::decode(
        &fixture("awkward/cmyk_adobe.jpg"),
        256,
        &DecodeLimits::default(),
    )
    .unwrap();
    let n = f64::from(decoded.rgb.width() * decoded.rgb.height());
    let mean = |c: usize| decoded.rgb.pixels().map(|p| f64::from(p.0[c])).sum::<f64>() / n;
    let (r, g, b) = (mean(0), mean(1), mean(2));
    assert!(
        r > 3.0 * g && r > 3.0 * b && g < 20.0 && b < 20.0,
        "mean rgb {r:.1} {g:.1} {b:.1}"
    );
    // And agree with the `image` crate's own CMYK conversion.
    let reference = image::load_from_memory(&fixture("awkward/cmyk_adobe.jpg"))
        .unwrap()
        .into_rgb8();
    let diff: f64 = decoded
        .rgb
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .sum::<f64>()
        / decoded.rgb.as_raw().len() as f64;
    assert!(diff < 3.0, "mean abs difference {diff}");
}

#[test]
fn transparent_pixels_become_white() {
    let mut png = Vec::new();
    image::RgbaImage::from_pixel(300, 300, image::Rgba([10, 200, 30, 0]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let decoded = preprocess::decode(&png, 256, &DecodeLimits::default()).unwrap();
    assert!(decoded.rgb.pixels().all(|p| p.0 == [255, 255, 255]));
    let mut gray = Vec::new();
    image::GrayImage::from_pixel(300, 200, image::Luma([77]))
        .write_to(
            &mut std::io::Cursor::new(&mut gray),
            image::ImageFormat::Png,
        )
        .unwrap();
    let decoded = preprocess::decode(&gray, 256, &DecodeLimits::default()).unwrap();
    assert!(decoded.rgb.pixels().all(|p| p.0 == [77, 77, 77]));
}

/// What the `image` crate makes of a PNG, flattened onto white as platescore shows
/// transparent pixels: the reference the row-by-row PNG decoder must match exactly.
fn reference_rgb(png: &[u8]) -> image::RgbImage {
    let image = image::load_from_memory(png).unwrap();
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u16::from(a);
        let over = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

fn encode_png(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    configure: impl FnOnce(&mut png::Encoder<&mut Vec<u8>>),
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    configure(&mut encoder);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

#[test]
fn pngs_decode_row_by_row_to_the_same_pixels_as_the_image_crate() {
    use png::{BitDepth, ColorType};
    let (width, height) = (23u32, 17u32);
    // Every byte differs from its neighbours, so that 16-bit rounding and alpha both show.
    let noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
            .collect()
    };
    let mut cases = Vec::new();
    for (color, channels) in [
        (ColorType::Grayscale, 1),
        (ColorType::GrayscaleAlpha, 2),
        (ColorType::Rgb, 3),
        (ColorType::Rgba, 4),
    ] {
        for (depth, bytes) in [(BitDepth::Eight, 1), (BitDepth::Sixteen, 2)] {
            let data = noise((width * height) as usize * channels * bytes);
            let png = encode_png(width, height, color, depth, |_| {}, &data);
            cases.push((format!("{color:?} {depth:?}"), png));
        }
    }
    // A palette with transparency, and 2-bit grey: both expanded as the image crate does.
    let palette_data = noise((width * height) as usize)
        .iter()
        .map(|b| b % 4)
        .collect::<Vec<_>>();
    cases.push((
        "palette with tRNS".into(),
        encode_png(
            width,
            height,
            ColorType::Indexed,
            BitDepth::Eight,
            |encoder| {
                encoder.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9]);
                encoder.set_trns(vec![0, 128, 255, 40]);
            },
            &palette_data,
        ),
    ));
    let two_bit = noise((width.div_ceil(4) * height) as usize);
    cases.push((
        "2-bit grey".into(),
        encode_png(
            width,
            height,
            ColorType::Grayscale,
            BitDepth::Two,
            |_| {},
            &two_bit,
        ),
    ));
    cases.push((
        "Adam7-interlaced 16-bit RGBA".into(),
        fixture("awkward/interlaced_rgba16.png"),
    ));
    for (name, png) in cases {
        let decoded = preprocess::decode(&png, 256, &DecodeLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference = reference_rgb(&png);
        assert_eq!(decoded.rgb.dimensions(), reference.dimensions(), "{name}");
        assert!(decoded.rgb == reference, "{name}: pixels differ");
    }
}

/// The decode's memory is known from the header: a 16-bit RGBA PNG is read a row at a
/// time into RGB8 (3 bytes a pixel, not 8 + 4 + 3 as a whole-image decode and its
/// conversions took), and a large JPEG is decoded at a reduced DCT scale.
#[test]
fn the_memory_a_decode_needs_is_known_before_decoding() {
    let (width, height) = (2000u32, 1500u32);
    let rows = vec![0u8; (width * height * 8) as usize];
    let png = encode_png(
        width,
        height,
        png::ColorType::Rgba,
        png::BitDepth::Sixteen,
        |_| {},
        &rows,
    );
    let needed = preprocess::memory_needed(&png, 256, &DecodeLimits::default()).unwrap();
    let rgb = u64::from(width * height) * 3;
    assert!(
        needed >= rgb && needed < rgb + rgb / 2,
        "{needed} bytes for a {rgb}-byte RGB image"
    );
    let jpeg = preprocess::memory_needed(
        &fixture("awkward/large_6000x4000_hamburger.jpeg"),
        256,
        &DecodeLimits::default(),
    )
    .unwrap();
    assert!(jpeg < 6000 * 4000, "{jpeg} bytes for a JPEG decoded at 1/8");
    let over = DecodeLimits {
        max_decode_bytes: needed - 1,
        ..DecodeLimits::default()
    };
    assert_eq!(
        preprocess::memory_needed(&png, 256, &over),
        Err(ImageError::TooMuchMemory {
            needed,
            limit: needed - 1
        })
    );
}

/// An image larger than the whole decode budget fails at once with `image_too_large`;
/// images that fit share the budget and wait their turn.
#[tokio::test]
async fn the_decode_budget_refuses_what_never_fits_and_queues_the_rest() {
    let photo = fixture("document.png");
    let needed = preprocess::memory_needed(&photo, 256, &DecodeLimits::default()).unwrap();
    let small_budget = ScorerSettings {
        decode_budget_bytes: needed - 1024,
        ..settings()
    };
    let scorer = Scorer::with_runtime(model(), tract(), &small_budget, None);
    match scorer.score(photo.clone().into(), &[], "en").await {
        Err(err @ InferenceError::Image(ImageError::TooMuchMemory { .. })) => {
            assert_eq!(err.code(), "image_too_large")
        }
        other => panic!("over the whole budget must be image_too_large: {other:?}"),
    }

    // A budget for one decode at a time: eight at once all finish, one after another.
    let one_at_a_time = ScorerSettings {
        decode_budget_bytes: needed + needed / 2,
        ..settings()
    };
    let scorer = Arc::new(Scorer::with_runtime(model(), tract(), &one_at_a_time, None));
    let held = scorer.decode_budget().reserve(needed).await.unwrap();
    let waiting = tokio::spawn({
        let scorer = scorer.clone();
        let photo = photo.clone();
        async move { scorer.score(photo.into(), &[], "en").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a decode must wait while the budget is held"
    );
    drop(held);
    waiting.await.unwrap().unwrap();
    let all = futures_util::future::join_all(
        (0..8).map(|_| scorer.score(photo.clone().into(), &[], "en")),
    )
    .await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(scorer.decode_budget().reserved_bytes(), 0);
}

#[test]
fn pixel_and_memory_limits_are_enforced_before_decoding() {
    let tight = DecodeLimits {
        max_pixels: 1_000_000,
        max_decode_bytes: 512 << 20,
    };
    let err = preprocess::decode(
        &fixture("awkward/large_6000x4000_hamburger.jpeg"),
        256,
        &tight,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ImageError::TooManyPixels {
            width: 6000,
            height: 4000,
            limit: 1_000_000
        }
    );
    assert_eq!(err.code(), "image_too_large");
    let little_memory = DecodeLimits {
        max_pixels: 50_000_000,
        max_decode_bytes: 100_000,
    };
    let err = preprocess::decode(&fixture("flower.webp"), 256, &little_memory).unwrap_err();
    assert!(matches!(err, ImageError::TooMuchMemory { .. }), "{err:?}");
    assert_eq!(
        preprocess::decode(b"GIF89a....", 256, &tight).unwrap_err(),
        ImageError::UnsupportedFormat
    );
}

#[test]
fn the_tensor_is_normalised_chw() {
    let model = model();
    let prepared = preprocess::prepare(
        &fixture("lemon.jpg"),
        &model.input,
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(prepared.tensor.len(), 3 * 224 * 224);
    // (x - 127) / 128 keeps every value within [-1, 1].
    assert!(prepared.tensor.iter().all(|v| (-1.0..=1.0).contains(v)));
    let mean: f32 = prepared.tensor.iter().sum::<f32>() / prepared.tensor.len() as f32;
    assert!(mean.abs() < 0.9, "{mean}");
}

#[test]
fn tips_respect_diets_and_always_come_one_to_three() {
    let model = model();
    let groups: std::collections::BTreeSet<&str> = model
        .table
        .food
        .values()
        .map(|c| c.group.as_str())
        .collect();
    let meat = [
        "chicken", "fish", "meat", "beef", "pork", "seafood", "salmon",
    ];
    let animal = [
        "egg", "eggs", "milk", "cheese", "butter", "yoghurt", "honey",
    ];
    let mut diets: Vec<Vec<DietTag>> = vec![vec![]];
    diets.extend(DietTag::ALL.iter().map(|t| vec![*t]));
    diets.push(vec![DietTag::Vegan, DietTag::LowFiber, DietTag::LowSodium]);
    diets.push(vec![
        DietTag::Vegetarian,
        DietTag::Pregnancy,
        DietTag::IodineRestricted,
    ]);
    diets.push(vec![DietTag::Halal, DietTag::Pregnancy, DietTag::LowSugar]);
    for group in &groups {
        for rating in 1..=5 {
            for tags in &diets {
                let tips = model.tips.select(group, rating, tags, "en");
                assert!(
                    (1..=3).contains(&tips.len()),
                    "{group} {rating} {tags:?}: {tips:?}"
                );
                for tip in &tips {
                    let text = tip.text.to_lowercase();
                    let suggests = ["add ", "try ", "choose ", "servings of ", "eat "]
                        .iter()
                        .any(|v| text.contains(v));
                    let advice_to_eat = |w: &str| suggests && text.contains(w);
                    if tags.contains(&DietTag::Vegetarian) || tags.contains(&DietTag::Vegan) {
                        assert!(
                            !meat.iter().any(|w| advice_to_eat(w)),
                            "{tags:?} told: {}",
                            tip.text
                        );
                    }
                    if tags.contains(&DietTag::Vegan) {
                        let plant_based = text.replace("soy yoghurt", "soy");
                        let words: Vec<&str> =
                            plant_based.split(|c: char| !c.is_alphabetic()).collect();
                        assert!(
                            !animal.iter().any(|w| words.contains(w)),
                            "vegan told: {}",
                            tip.text
                        );
                    }
                    if tags.contains(&DietTag::Halal) {
                        // Warnings against alcohol are fine; moderation advice is not.
                        let drinks_allowed =
                            text.contains("alcohol") && !text.contains("no amount of alcohol");
                        assert!(
                            !text.contains("pork") && !drinks_allowed,
                            "halal told: {}",
                            tip.text
                        );
                    }
                    if tags.contains(&DietTag::LowFiber) {
                        assert!(
                            !text.contains("more fibre") && !text.contains("fibre-rich"),
                            "low_fiber told: {}",
                            tip.text
                        );
                    }
                    if tags.contains(&DietTag::IodineRestricted) {
                        assert!(
                            !text.contains("servings of seafood"),
                            "iodine_restricted told: {}",
                            tip.text
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_model_file_that_does_not_match_its_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "model.onnx",
        "labels.txt",
        "food_classes.toml",
        "tips.toml",
        "manifest.json",
    ] {
        std::fs::copy(model_dir().join(file), dir.path().join(file)).unwrap();
    }
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    let tampered = manifest.replacen("\"sha256\": \"", "\"sha256\": \"00", 1);
    std::fs::write(dir.path().join("manifest.json"), tampered).unwrap();
    let err = FoodModel::load(dir.path(), Precision::Fp32).unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrency_each_caller_gets_its_own_result_and_batches_stay_in_bounds() {
    let names = [
        "lemon.jpg",
        "pineapple.jpg",
        "cabbage.jpg",
        "bell_pepper.jpg",
        "cat.jpg",
        "pizza.jpg",
        "document.png",
    ];
    // Reference: each image scored alone.
    let alone = tract_scorer();
    let mut expected = Vec::new();
    for name in names {
        expected.push(
            alone
                .score(fixture(name).into(), &[], "en")
                .await
                .unwrap()
                .result,
        );
    }

    let sizes = Arc::new(Mutex::new(Vec::new()));
    let observed = sizes.clone();
    let batched = Arc::new(Scorer::with_runtime(
        model(),
        tract(),
        &ScorerSettings {
            max_batch: Some(4),
            max_wait: Some(Duration::from_millis(20)),
            workers: Some(1),
            queue_capacity: 8,
            ..settings()
        },
        Some(Arc::new(move |size| observed.lock().unwrap().push(size))),
    ));
    let mut handles = Vec::new();
    for round in 0..3 {
        for (i, name) in names.iter().enumerate() {
            let scorer = batched.clone();
            let bytes = fixture(name);
            handles.push(tokio::spawn(async move {
                (
                    round,
                    i,
                    scorer.score(bytes.into(), &[], "en").await.unwrap().result,
                )
            }));
        }
    }
    for handle in handles {
        let (_, i, result) = handle.await.unwrap();
        let reference = &expected[i];
        assert_eq!(
            result.labels.iter().map(|l| l.index).collect::<Vec<_>>()[..3],
            reference.labels.iter().map(|l| l.index).collect::<Vec<_>>()[..3],
            "{}",
            names[i]
        );
        assert_eq!(result.is_food, reference.is_food, "{}", names[i]);
        assert!(
            (result.confidence - reference.confidence).abs() < 1e-3,
            "{}",
            names[i]
        );
    }
    let sizes = sizes.lock().unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), 3 * names.len());
    assert!(sizes.iter().all(|&s| (1..=4).contains(&s)), "{sizes:?}");
    assert!(
        sizes.iter().any(|&s| s > 1),
        "no batching happened: {sizes:?}"
    );
}

/// Whether ONNX Runtime can be tested here: the library the build bundled (CI always has
/// it) or `ORT_DYLIB_PATH`.
fn onnx_runtime_available() -> bool {
    if let Err(why) = platescore::inference::runtime::bundled_library() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must bundle ONNX Runtime: {why}"
        );
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            eprintln!("ONNX Runtime is not bundled ({why}) nor in ORT_DYLIB_PATH: not tested");
            return false;
        }
    }
    true
}

/// ONNX Runtime on the CPU, running the model file of `precision`.
fn on_ort(precision: ModelPrecision) -> ScorerSettings {
    ScorerSettings {
        precision,
        runtime: RuntimeSettings {
            choice: RuntimeChoice::Ort,
            ..settings().runtime
        },
        ..settings()
    }
}

/// The photos of `tests/fixtures/agreement` (a copy of `../shared/images`), by path.
fn agreement_photos() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agreement");
    let mut found = Vec::new();
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if ["food", "nonfood", "awkward"]
                .iter()
                .any(|top| path.strip_prefix(&root).unwrap().starts_with(top))
            {
                let name = path.strip_prefix(&root).unwrap().display().to_string();
                found.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

/// The model folders shipped under `models/` that hold an INT8 file.
fn models_with_int8() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|dir| {
            std::fs::read_to_string(dir.join("manifest.json"))
                .is_ok_and(|text| text.contains("\"int8\""))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Every model's INT8 file makes the same food decisions as its FP32 file with nearly the
/// same scores, and it is the CPU default (`default_on_cpu` in the manifest) exactly when it
/// also agrees on the top-1 class (issue 14): over the sample photos, the same top-1 on at
/// least 97%, the same food/not-food decision on at least 98%, scores within 0.1 on average.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_int8_file_is_the_cpu_default_exactly_when_it_agrees_with_fp32() {
    if !onnx_runtime_available() {
        return;
    }
    let dirs = models_with_int8();
    assert!(dirs.contains(&model_dir()), "{dirs:?}");
    for dir in dirs {
        int8_agreement(&dir).await;
    }
}

async fn int8_agreement(dir: &std::path::Path) {
    let at = |precision| ScorerSettings {
        model_dir: dir.to_path_buf(),
        ..on_ort(precision)
    };
    let fp32 = Scorer::load(&at(ModelPrecision::Fp32), None).unwrap();
    let int8 = Scorer::load(&at(ModelPrecision::Int8), None).unwrap();
    let model = dir.display();
    assert_eq!(int8.model().precision, Precision::Int8);
    assert_ne!(int8.model().version, fp32.model().version);
    let photos = agreement_photos();
    assert!(photos.len() >= 70, "only {} photos", photos.len());
    let (mut scored, mut same_top1, mut same_decision) = (0, 0, 0);
    let mut score_differences = Vec::new();
    for (name, bytes) in &photos {
        let a = fp32.score(bytes.clone().into(), &[], "en").await;
        let b = int8.score(bytes.clone().into(), &[], "en").await;
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a.result, b.result),
            (Err(a), Err(b)) => {
                assert_eq!(a.code(), b.code(), "{model}: {name}");
                continue;
            }
            (a, b) => panic!("{model}: {name}: fp32 {:?}, int8 {:?}", a.err(), b.err()),
        };
        scored += 1;
        if a.labels[0].index == b.labels[0].index {
            same_top1 += 1;
        } else {
            eprintln!(
                "{model}: {name}: top-1 {} {:.3} (fp32) vs {} {:.3} (int8)",
                a.labels[0].label,
                a.labels[0].probability,
                b.labels[0].label,
                b.labels[0].probability
            );
        }
        if a.is_food == b.is_food {
            same_decision += 1;
        } else {
            eprintln!(
                "{model}: {name}: is_food {} (fp32) vs {} (int8)",
                a.is_food, b.is_food
            );
        }
        if let (Some(x), Some(y)) = (a.score, b.score) {
            score_differences.push((x - y).abs());
        }
    }
    let share = |n: usize| n as f64 / scored as f64;
    assert!(!score_differences.is_empty());
    let mean_difference = score_differences.iter().sum::<f64>() / score_differences.len() as f64;
    eprintln!(
        "{model}: {scored} photos: top-1 agrees on {:.1}%, food decision on {:.1}%, mean |score difference| {mean_difference:.3} over {}",
        share(same_top1) * 100.0,
        share(same_decision) * 100.0,
        score_differences.len()
    );
    assert!(
        share(same_decision) >= 0.98,
        "{model}: food decision agreement {same_decision}/{scored}"
    );
    assert!(
        mean_difference <= 0.1,
        "{model}: mean score difference {mean_difference}"
    );
    let agrees = share(same_top1) >= 0.97;
    assert_eq!(
        FoodModel::int8_is_cpu_default(dir).unwrap(),
        agrees,
        "{model}: `default_on_cpu` must be set exactly when the top-1 class agrees on 97% ({same_top1}/{scored})"
    );
}

/// `auto` runs the INT8 file on ONNX Runtime's CPU provider only where the manifest makes
/// it the CPU default, and never on tract.
#[test]
fn auto_precision_follows_the_manifest_on_onnx_runtime_and_is_fp32_on_tract() {
    let auto = |dir: &std::path::Path, choice| ScorerSettings {
        model_dir: dir.to_path_buf(),
        precision: ModelPrecision::Auto,
        runtime: RuntimeSettings {
            choice,
            ..settings().runtime
        },
        ..settings()
    };
    let load = |dir: &std::path::Path, choice| {
        platescore::inference::load_model(&auto(dir, choice)).unwrap()
    };
    // The same folder with its INT8 file made the CPU default.
    let int8_default = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, int8_default.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let manifest = int8_default.path().join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let marked = text.replace("\"default_on_cpu\": false", "\"default_on_cpu\": true");
    assert_ne!(marked, text);
    std::fs::write(&manifest, marked).unwrap();

    for dir in [model_dir(), int8_default.path().to_path_buf()] {
        assert_eq!(load(&dir, RuntimeChoice::Tract).precision, Precision::Fp32);
    }
    if onnx_runtime_available() {
        let shipped = load(&model_dir(), RuntimeChoice::Ort);
        let expected = if FoodModel::int8_is_cpu_default(&model_dir()).unwrap() {
            Precision::Int8
        } else {
            Precision::Fp32
        };
        assert_eq!(shipped.precision, expected);
        let marked = load(int8_default.path(), RuntimeChoice::Ort);
        assert_eq!(marked.precision, Precision::Int8);
        assert!(marked.version.contains("int8"), "{}", marked.version);
    }
}

/// ONNX Runtime, from the library the build bundled (CI always has it) or ORT_DYLIB_PATH.
#[tokio::test]
async fn onnx_runtime_agrees_with_tract() {
    if !onnx_runtime_available() {
        return;
    }
    let ort_settings = on_ort(ModelPrecision::Fp32);
    let ort = Scorer::load(&ort_settings, None).unwrap();
    assert_eq!(ort.runtime_name(), "ort-cpu");
    assert_eq!(ort.batcher_settings().max_batch, 8);
    let tract = tract_scorer();
    for name in [
        "lemon.jpg",
        "cat.jpg",
        "awkward/large_6000x4000_hamburger.jpeg",
    ] {
        let a = ort
            .score(fixture(name).into(), &[], "en")
            .await
            .unwrap()
            .result;
        let b = tract
            .score(fixture(name).into(), &[], "en")
            .await
            .unwrap()
            .result;
        assert_eq!(a.labels[0].index, b.labels[0].index, "{name}");
        assert!(
            (a.labels[0].probability - b.labels[0].probability).abs() < 2e-3,
            "{name}"
        );
        assert_eq!(a.is_food, b.is_food);
    }
}

/// A GPU provider, only when `PLATESCORE_TEST_EXECUTION_PROVIDER` names one:
/// `deploy/gpu/check.sh` sets it, with onnxruntime-gpu's library in `ORT_DYLIB_PATH`. The
/// provider must really run (no fallback) and agree with the CPU on the same library.
#[tokio::test]
async fn a_gpu_provider_runs_for_real_and_agrees_with_the_cpu() {
    let (provider, name) = match std::env::var("PLATESCORE_TEST_EXECUTION_PROVIDER").as_deref() {
        Ok("cuda") => (ExecutionProvider::Cuda, "ort-cuda"),
        Ok("tensorrt") => (ExecutionProvider::Tensorrt, "ort-tensorrt"),
        _ => {
            eprintln!("PLATESCORE_TEST_EXECUTION_PROVIDER is not cuda or tensorrt: no GPU test");
            return;
        }
    };
    let cache = tempfile::tempdir().unwrap();
    let on = |provider| ScorerSettings {
        runtime: RuntimeSettings {
            choice: RuntimeChoice::Ort,
            provider,
            provider_fallback: false,
            tensorrt_fp16: true,
            tensorrt_cache_dir: Some(
                std::env::var_os("PLATESCORE_TENSORRT_CACHE_DIR")
                    .map_or_else(|| cache.path().to_path_buf(), PathBuf::from),
            ),
            ..settings().runtime
        },
        max_batch: Some(8),
        ..settings()
    };
    let gpu = Scorer::load(&on(provider), None).unwrap();
    assert_eq!(gpu.runtime_name(), name);
    let cpu = Scorer::load(&on(ExecutionProvider::Cpu), None).unwrap();
    assert_eq!(cpu.runtime_name(), "ort-cpu");
    let names = [
        "apple.jpg",
        "lemon.jpg",
        "pizza.jpg",
        "cat.jpg",
        "flower.webp",
        "awkward/large_6000x4000_hamburger.jpeg",
    ];
    // Concurrently, so the GPU sees batches of several sizes.
    let scored = futures_util::future::join_all(
        names
            .iter()
            .map(|n| gpu.score(fixture(n).into(), &[], "en")),
    )
    .await;
    for (name, scored) in names.iter().zip(scored) {
        let a = scored.unwrap().result;
        let b = cpu
            .score(fixture(name).into(), &[], "en")
            .await
            .unwrap()
            .result;
        assert_eq!(a.labels[0].index, b.labels[0].index, "{name}");
        assert_eq!(a.is_food, b.is_food, "{name}");
        let gap = (a.score.unwrap_or(0.0) - b.score.unwrap_or(0.0)).abs();
        assert!(gap <= 0.05, "{name}: score {:?} vs {:?}", a.score, b.score);
    }
}
