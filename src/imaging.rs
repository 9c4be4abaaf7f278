//! What an image is, read from its bytes: the format by magic number, the size from the
//! header. Nothing here decodes pixels.

use std::io::Cursor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }

    fn decoder_format(self) -> image::ImageFormat {
        match self {
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Png => image::ImageFormat::Png,
            Self::Webp => image::ImageFormat::WebP,
        }
    }
}

/// The format the bytes really are, whatever name or type they were sent with.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(ImageFormat::Png),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(ImageFormat::Webp),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a JPEG, PNG or WebP image")]
    UnsupportedFormat,
    #[error("the image header cannot be read: {0}")]
    Unreadable(String),
    #[error("the image is {width}×{height} = {} pixels, over the limit of {limit}", u64::from(*width) * u64::from(*height))]
    TooManyPixels { width: u32, height: u32, limit: u64 },
}

impl HeaderError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedFormat => "unsupported_image_format",
            Self::Unreadable(_) => "image_unreadable",
            Self::TooManyPixels { .. } => "image_too_large",
        }
    }
}

/// Sniffs the format and reads the dimensions from the header, refusing images over
/// `max_pixels` before anything would allocate for them.
pub fn inspect(bytes: &[u8], max_pixels: u64) -> Result<ImageHeader, HeaderError> {
    let format = sniff(bytes).ok_or(HeaderError::UnsupportedFormat)?;
    let (width, height) =
        image::ImageReader::with_format(Cursor::new(bytes), format.decoder_format())
            .into_dimensions()
            .map_err(|e| HeaderError::Unreadable(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(HeaderError::Unreadable(format!(
            "zero dimension {width}×{height}"
        )));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(HeaderError::TooManyPixels {
            width,
            height,
            limit: max_pixels,
        });
    }
    Ok(ImageHeader {
        format,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn sniffs_by_magic_bytes_only() {
        assert_eq!(sniff(&png(2, 2)), Some(ImageFormat::Png));
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ImageFormat::Webp));
        assert_eq!(sniff(b"GIF89a......"), None);
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn reads_dimensions_and_enforces_the_pixel_limit() {
        let header = inspect(&png(30, 20), 600).unwrap();
        assert_eq!((header.width, header.height), (30, 20));
        assert_eq!(
            inspect(&png(30, 20), 599),
            Err(HeaderError::TooManyPixels {
                width: 30,
                height: 20,
                limit: 599
            })
        );
    }

    #[test]
    fn a_truncated_header_is_unreadable() {
        let bytes = png(4, 4);
        assert!(matches!(
            inspect(&bytes[..12], 100),
            Err(HeaderError::Unreadable(_))
        ));
    }
}
