//! Bytes to input tensor: sniff the format, decode (JPEG at reduced DCT scale when the photo
//! is much larger than the input), apply EXIF orientation, flatten alpha onto white, then
//! resize and centre-crop in one pass with `fast_image_resize`, and normalise to CHW f32.
//! Blocking CPU work: callers run it off the async runtime.

use std::io::Cursor;

use fast_image_resize::{
    images::{Image as ResizeImage, ImageRef},
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use image::{metadata::Orientation, DynamicImage, ImageDecoder, RgbImage};

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
    /// Bytes the decoder may allocate for pixels.
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

/// Decodes to RGB8, oriented upright, no smaller than `min_shorter_side` on its shorter
/// side unless the file itself is smaller.
pub fn decode(
    bytes: &[u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<Decoded, ImageError> {
    let format = imaging::sniff(bytes).ok_or(ImageError::UnsupportedFormat)?;
    match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, min_shorter_side, limits),
        ImageFormat::Png | ImageFormat::Webp => decode_other(bytes, format, limits),
    }
}

fn decode_jpeg(
    bytes: &[u8],
    min_shorter_side: u32,
    limits: &DecodeLimits,
) -> Result<Decoded, ImageError> {
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
    let needed = u64::from(out_w) * u64::from(out_h) * info.pixel_format.pixel_bytes() as u64;
    if needed > limits.max_decode_bytes {
        return Err(ImageError::TooMuchMemory {
            needed,
            limit: limits.max_decode_bytes,
        });
    }
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

fn decode_other(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<Decoded, ImageError> {
    let image_format = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        _ => image::ImageFormat::WebP,
    };
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.max_decode_bytes);
    reader.limits(decode_limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_pixels(width, height, limits)?;
    let needed = decoder.total_bytes();
    if needed > limits.max_decode_bytes {
        return Err(ImageError::TooMuchMemory {
            needed,
            limit: limits.max_decode_bytes,
        });
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
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
        format,
        original: (width, height),
        dct_scale_denominator: 1,
    })
}

/// Transparent pixels become white, as a photo app shows them.
fn flatten_on_white(rgba: &image::RgbaImage) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u16::from(a);
        let over = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// Resizes the centre crop straight to the input size (one bilinear pass), then
/// normalises into CHW f32.
pub fn resize_crop_normalise(rgb: &RgbImage, spec: &InputSpec) -> Result<Vec<f32>, ImageError> {
    let (w, h) = rgb.dimensions();
    // The crop covers size/resize_shorter of the shorter side, centred.
    let side = f64::from(w.min(h)) * f64::from(spec.size) / f64::from(spec.resize_shorter);
    let (left, top) = ((f64::from(w) - side) / 2.0, (f64::from(h) - side) / 2.0);
    let src = ImageRef::new(w, h, rgb.as_raw(), PixelType::U8x3).map_err(corrupt)?;
    let mut dst = ResizeImage::new(spec.size, spec.size, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, side, side);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(corrupt)?;

    let plane = (spec.size * spec.size) as usize;
    let mut tensor = vec![0f32; 3 * plane];
    for (i, px) in dst.buffer().chunks_exact(3).enumerate() {
        for c in 0..3 {
            tensor[c * plane + i] = (f32::from(px[c]) - spec.mean[c]) / spec.std[c];
        }
    }
    Ok(tensor)
}
