//! Bytes to input tensor: sniff the format, read the header and estimate the memory the
//! decode takes ([`memory_needed`]), decode (JPEG at reduced DCT scale when the photo is much
//! larger than the input; PNG a row at a time), apply EXIF orientation, flatten alpha onto
//! white, then resize and centre-crop in one pass with `fast_image_resize`, and normalise to
//! CHW f32. Blocking CPU work: callers run it off the async runtime.

use std::io::Cursor;

use image::{metadata::Orientation, DynamicImage, ImageDecoder, RgbImage};
use pixels::{Crop, RowLayout};

use crate::imaging::{self, ImageFormat};

/// The model's input: a `size`×`size` RGB crop taken from the image scaled so that its
/// shorter side is `resize_shorter`, normalised as `(x - mean) / std` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub size: u32,
    pub resize_shorter: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputSpec {
    pub fn tensor_len(&self) -> usize {
        3 * (self.size as usize) * (self.size as usize)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Width × height as declared by the header.
    pub max_pixels: u64,
    /// Memory the decode of one image may take, as [`memory_needed`] estimates it.
    pub max_decode_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 50_000_000,
            max_decode_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("not a JPEG, PNG or WebP image")]
    UnsupportedFormat,
    #[error("the image is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("the image is {width}×{height}, over the limit of {limit} pixels")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("decoding needs {needed} bytes, over the limit of {limit}")]
    TooMuchMemory { needed: u64, limit: u64 },
}

impl ImageError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedFormat => "unsupported_image_format",
            Self::Corrupt(_) => "image_corrupt",
            Self::TooManyPixels { .. } | Self::TooMuchMemory { .. } => "image_too_large",
        }
    }
}

fn corrupt(err: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(err.to_string())
}

/// A decoded, oriented image ready for resizing, and what it was.
#[derive(Debug)]
pub struct Decoded {
    pub rgb: RgbImage,
    pub format: ImageFormat,
    /// Size as stored in the file, before orientation and DCT scaling.
    pub original: (u32, u32),
    /// 1, 2, 4 or 8: how much smaller the JPEG was decoded.
    pub dct_scale_denominator: u32,
}

/// The input tensor of one image (CHW, f32).
#[derive(Debug)]
pub struct Prepared {
    pub tensor: Vec<f32>,
    pub format: ImageFormat,
    pub original: (u32, u32),
    pub dct_scale_denominator: u32,
}

pub fn prepare(
    bytes: &[u8],
    spec: &InputSpec,
    limits: &DecodeLimits,
) -> Result<Prepared, ImageError> {
    let decoded = decode(bytes, spec.resize_shorter, limits)?;
    let tensor = resize_crop_normalise(&decoded.rgb, spec)?;
    Ok(Prepared {
        tensor,
        format: decoded.format,
        original: decoded.original,
        dct_scale_denominator: decoded.dct_scale_denominator,
    })
}

/// The most memory, in bytes, that [`decode`] and resizing to `min_shorter_side` take for
/// this image at once, estimated from its header (size, colour type, coding, orientation)
/// without decoding a pixel. It counts every buffer the path allocates that grows with the
/// image: the decoder's own, the decoded pixels, conversions, a rotated copy, the resize's
/// intermediate rows. Images over the limits are refused here.
pub fn memory_needed(
    bytes: &[u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<u64, ImageError> {
    Ok(open(bytes, min_shorter_side, limits)?.memory)
}

/// Decodes to RGB8, oriented upright, no smaller than `min_shorter_side` on its shorter
/// side unless the file itself is smaller.
pub fn decode(
    bytes: &[u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<Decoded, ImageError> {
    match open(bytes, min_shorter_side, limits)?.source {
        Source::Jpeg(jpeg) => decode_jpeg(*jpeg, limits),
        Source::Png(png) => decode_png(*png),
        Source::Webp(webp) => decode_webp(webp, limits),
    }
}

/// An image whose header has been read, with what its decode will take.
struct Opened<'a> {
    memory: u64,
    source: Source<'a>,
}

enum Source<'a> {
    Jpeg(Box<JpegSource<'a>>),
    Png(Box<PngSource<'a>>),
    Webp(WebpSource<'a>),
}

fn open<'a>(
    bytes: &'a [u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<Opened<'a>, ImageError> {
    let opened = match imaging::sniff(bytes).ok_or(ImageError::UnsupportedFormat)? {
        ImageFormat::Jpeg => open_jpeg(bytes, min_shorter_side, limits)?,
        ImageFormat::Png => open_png(bytes, min_shorter_side, limits)?,
        ImageFormat::Webp => open_webp(bytes, min_shorter_side, limits)?,
    };
    if opened.memory > limits.max_decode_bytes {
        return Err(ImageError::TooMuchMemory {
            needed: opened.memory,
            limit: limits.max_decode_bytes,
        });
    }
    Ok(opened)
}

fn check_pixels(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(corrupt(format!("zero dimension {width}×{height}")));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

fn pixels(width: impl Into<u64>, height: impl Into<u64>) -> u64 {
    width.into() * height.into()
}

/// Whether orienting the image makes a rotated copy (flips and half turns are in place).
fn rotates_a_quarter(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Memory of resizing a `width`×`height` RGB image: the resizer's first pass keeps about
/// `min_shorter_side` columns of every source row; the tensor and tables fit in the rest.
fn resize_memory(width: u32, height: u32, min_shorter_side: u32) -> u64 {
    pixels(width.max(height), min_shorter_side) * 3 + (1 << 20)
}

struct JpegSource<'a> {
    decoder: jpeg_decoder::Decoder<Cursor<&'a [u8]>>,
    original: (u32, u32),
    scaled: (u16, u16),
}

fn open_jpeg<'a>(
    bytes: &'a [u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<Opened<'a>, ImageError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(corrupt)?;
    let info = decoder.info().ok_or_else(|| corrupt("no JPEG header"))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_pixels(width, height, limits)?;

    // The smallest DCT scale (1/8, 1/4, 1/2, 1) whose shorter side still covers the target.
    let shorter = width.min(height);
    let (want_w, want_h) = if shorter > min_shorter_side {
        (
            (u64::from(width) * u64::from(min_shorter_side)).div_ceil(u64::from(shorter)) as u16,
            (u64::from(height) * u64::from(min_shorter_side)).div_ceil(u64::from(shorter)) as u16,
        )
    } else {
        (info.width, info.height)
    };
    let (out_w, out_h) = decoder.scale(want_w, want_h).map_err(corrupt)?;
    let info = decoder.info().ok_or_else(|| corrupt("no JPEG header"))?;
    let samples = info.pixel_format.pixel_bytes() as u64;
    let scaled = pixels(out_w, out_h);
    // Progressive and lossless JPEGs keep the whole image's coefficients (i16 per sample,
    // in 16×16 blocks at most) until the last scan.
    let coefficients = match info.coding_process {
        jpeg_decoder::CodingProcess::DctSequential => 0,
        _ => pixels(width.next_multiple_of(16), height.next_multiple_of(16)) * samples * 2,
    };
    let memory = coefficients
        + 2 * scaled * samples // the decoder's component planes, then its output
        + 2 * scaled * 3 // the RGB copy, and a rotated one
        + resize_memory(u32::from(out_w), u32::from(out_h), min_shorter_side);
    Ok(Opened {
        memory,
        source: Source::Jpeg(Box::new(JpegSource {
            decoder,
            original: (width, height),
            scaled: (out_w, out_h),
        })),
    })
}

fn decode_jpeg(source: JpegSource<'_>, limits: &DecodeLimits) -> Result<Decoded, ImageError> {
    let JpegSource {
        mut decoder,
        original: (width, height),
        scaled: (out_w, out_h),
    } = source;
    let info = decoder.info().ok_or_else(|| corrupt("no JPEG header"))?;
    decoder.set_max_decoding_buffer_size(
        usize::try_from(limits.max_decode_bytes).unwrap_or(usize::MAX),
    );
    let pixels = decoder.decode().map_err(corrupt)?;
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);

    let (w, h) = (u32::from(out_w), u32::from(out_h));
    let expected = (w as usize) * (h as usize) * info.pixel_format.pixel_bytes();
    if pixels.len() < expected {
        return Err(corrupt(format!(
            "{} bytes of pixels, expected {expected}",
            pixels.len()
        )));
    }
    let rgb: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        jpeg_decoder::PixelFormat::L16 => pixels
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        // jpeg-decoder gives plain CMYK (Adobe's inverted storage already undone).
        jpeg_decoder::PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|p| {
                let k = 255 - u16::from(p[3]);
                [p[0], p[1], p[2]].map(|c| ((255 - u16::from(c)) * k / 255) as u8)
            })
            .collect(),
    };
    let mut image = DynamicImage::ImageRgb8(
        RgbImage::from_raw(w, h, rgb)
            .ok_or_else(|| corrupt("pixel buffer does not match the size"))?,
    );
    image.apply_orientation(orientation);
    Ok(Decoded {
        rgb: image.into_rgb8(),
        format: ImageFormat::Jpeg,
        original: (width, height),
        dct_scale_denominator: (width / w.max(1)).max(1),
    })
}

/// A PNG is decoded a row at a time, each row converted to RGB8 as it comes, so that no
/// full-size buffer of its own format (up to 8 bytes a pixel, for 16-bit RGBA) is ever held.
struct PngSource<'a> {
    reader: png::Reader<Cursor<&'a [u8]>>,
    orientation: Orientation,
}

fn png_error(err: png::DecodingError, limit: u64) -> ImageError {
    match err {
        png::DecodingError::LimitsExceeded => ImageError::TooMuchMemory {
            needed: limit.saturating_add(1),
            limit,
        },
        other => corrupt(other),
    }
}

fn open_png<'a>(
    bytes: &'a [u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<Opened<'a>, ImageError> {
    let limit = limits.max_decode_bytes;
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: usize::try_from(limit).unwrap_or(usize::MAX),
        },
    );
    // As the `image` crate reads PNGs: palettes and low bit depths expanded, 16 bits kept.
    decoder.set_transformations(png::Transformations::EXPAND);
    let (width, height) = decoder
        .read_header_info()
        .map_err(|e| png_error(e, limit))?
        .size();
    check_pixels(width, height, limits)?;
    let reader = decoder.read_info().map_err(|e| png_error(e, limit))?;
    let orientation = reader
        .info()
        .exif_metadata
        .as_deref()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let rgb = pixels(width, height) * 3;
    let line = reader
        .output_line_size(width)
        .ok_or_else(|| corrupt("the row size overflows"))? as u64;
    let memory = rgb
        + if rotates_a_quarter(orientation) { rgb } else { 0 }
        // The decoder's current and previous rows, and a window of inflated data.
        + 4 * line
        + (256 << 10)
        + resize_memory(width, height, min_shorter_side);
    Ok(Opened {
        memory,
        source: Source::Png(Box::new(PngSource {
            reader,
            orientation,
        })),
    })
}

fn decode_png(source: PngSource<'_>) -> Result<Decoded, ImageError> {
    let PngSource {
        mut reader,
        orientation,
    } = source;
    let (width, height) = reader.info().size();
    let (color, depth) = reader.output_color_type();
    let layout = RowLayout {
        channels: color.samples(),
        sixteen_bit: depth == png::BitDepth::Sixteen,
    };
    let stride = width as usize * 3;
    let mut rgb = vec![0u8; stride * height as usize];
    let mut pass_row = Vec::new();
    let mut next_line = 0;
    while let Some(row) = reader
        .next_interlaced_row()
        .map_err(|e| png_error(e, u64::MAX))?
    {
        match row.interlace() {
            png::InterlaceInfo::Null(_) => {
                let line = rgb
                    .get_mut(next_line * stride..(next_line + 1) * stride)
                    .ok_or_else(|| corrupt("more rows than the height"))?;
                layout.write_rgb(row.data(), line).map_err(corrupt)?;
                next_line += 1;
            }
            png::InterlaceInfo::Adam7(pass) => {
                pass_row.resize(row.data().len() / layout.bytes_per_pixel() * 3, 0);
                layout
                    .write_rgb(row.data(), &mut pass_row)
                    .map_err(corrupt)?;
                png::expand_interlaced_row(&mut rgb, stride, &pass_row, pass, 24);
            }
        }
    }
    let mut image = DynamicImage::ImageRgb8(
        RgbImage::from_raw(width, height, rgb)
            .ok_or_else(|| corrupt("pixel buffer does not match the size"))?,
    );
    image.apply_orientation(orientation);
    Ok(Decoded {
        rgb: image.into_rgb8(),
        format: ImageFormat::Png,
        original: (width, height),
        dct_scale_denominator: 1,
    })
}

struct WebpSource<'a> {
    decoder: Box<dyn ImageDecoder + 'a>,
    orientation: Orientation,
}

fn open_webp<'a>(
    bytes: &'a [u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<Opened<'a>, ImageError> {
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::WebP);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.max_decode_bytes);
    reader.limits(decode_limits);
    let mut decoder: Box<dyn ImageDecoder + 'a> = Box::new(reader.into_decoder().map_err(corrupt)?);
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let decoded = decoder.total_bytes();
    let memory = pixels(width, height) * 4 // image-webp's own frame (YUV planes, or ARGB)
        + decoded
        + if rotates_a_quarter(orientation) { decoded } else { 0 }
        + if decoder.color_type().has_alpha() { pixels(width, height) * 3 } else { 0 }
        + resize_memory(width, height, min_shorter_side);
    Ok(Opened {
        memory,
        source: Source::Webp(WebpSource {
            decoder,
            orientation,
        }),
    })
}

fn decode_webp(source: WebpSource<'_>, limits: &DecodeLimits) -> Result<Decoded, ImageError> {
    let WebpSource {
        decoder,
        orientation,
    } = source;
    let (width, height) = decoder.dimensions();
    let needed = decoder.total_bytes();
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => ImageError::TooMuchMemory {
            needed,
            limit: limits.max_decode_bytes,
        },
        other => corrupt(other),
    })?;
    image.apply_orientation(orientation);
    let rgb = if image.color().has_alpha() {
        flatten_on_white(&image.into_rgba8())
    } else {
        image.into_rgb8()
    };
    Ok(Decoded {
        rgb,
        format: ImageFormat::Webp,
        original: (width, height),
        dct_scale_denominator: 1,
    })
}

/// Transparent pixels become white, as a photo app shows them.
fn flatten_on_white(rgba: &image::RgbaImage) -> RgbImage {
    RgbImage::from_raw(
        rgba.width(),
        rgba.height(),
        pixels::flatten_rgba_on_white(rgba.as_raw()),
    )
    .expect("three bytes a pixel")
}

/// Resizes the centre crop straight to the input size (one bilinear pass), then
/// normalises into CHW f32.
pub fn resize_crop_normalise(rgb: &RgbImage, spec: &InputSpec) -> Result<Vec<f32>, ImageError> {
    let (w, h) = rgb.dimensions();
    // The crop covers size/resize_shorter of the shorter side, centred.
    let side = f64::from(w.min(h)) * f64::from(spec.size) / f64::from(spec.resize_shorter);
    let (left, top) = ((f64::from(w) - side) / 2.0, (f64::from(h) - side) / 2.0);
    let resized = pixels::resize_crop_rgb(rgb.as_raw(), w, h, Crop { left, top, side }, spec.size)
        .map_err(corrupt)?;

    let plane = (spec.size * spec.size) as usize;
    let mut tensor = vec![0f32; 3 * plane];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for c in 0..3 {
            tensor[c * plane + i] = (f32::from(px[c]) - spec.mean[c]) / spec.std[c];
        }
    }
    Ok(tensor)
}
