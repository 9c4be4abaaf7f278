//! The per-pixel loops of image preprocessing. They are a crate of their own so that debug
//! builds compile them optimised, as they do dependencies (the workspace's
//! `[profile.dev.package.pixels]`): unoptimised, a 50-megapixel image takes seconds in
//! each of them. Only loops live here; what they mean is decided in `inference::preprocess`.

use fast_image_resize::{
    images::{Image, ImageRef},
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};

/// A channel `c` with alpha `a`, composited over white: `c·a/255 + 255 − a`, rounded.
pub fn over_white(c: u8, a: u8) -> u8 {
    let a = u16::from(a);
    ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8
}

/// A 16-bit sample as 8 bits, rounded (as the `image` crate converts them).
fn to_8_bits(high: u8, low: u8) -> u8 {
    ((u32::from(u16::from_be_bytes([high, low])) + 128) / 257) as u8
}

/// How the samples of a decoded row are laid out: 1 to 4 channels (grey, grey + alpha, RGB,
/// RGBA), of 8 or 16 bits each (16-bit ones big-endian, as in PNG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLayout {
    pub channels: usize,
    pub sixteen_bit: bool,
}

impl RowLayout {
    pub fn bytes_per_pixel(self) -> usize {
        self.channels * if self.sixteen_bit { 2 } else { 1 }
    }

    /// Writes `row` into `rgb` as RGB8: 16-bit samples rounded to 8 bits, grey repeated,
    /// alpha flattened onto white with [`over_white`]. `rgb` holds 3 bytes for each pixel
    /// of `row`; a length that does not match is refused.
    pub fn write_rgb(self, row: &[u8], rgb: &mut [u8]) -> Result<(), String> {
        if row.len() % self.bytes_per_pixel() != 0
            || row.len() / self.bytes_per_pixel() * 3 != rgb.len()
        {
            return Err(format!(
                "a row of {} bytes does not make {} bytes of RGB",
                row.len(),
                rgb.len()
            ));
        }
        match (self.channels, self.sixteen_bit) {
            (1, false) => write::<1, false>(row, rgb),
            (2, false) => write::<2, false>(row, rgb),
            (3, false) => write::<3, false>(row, rgb),
            (1, true) => write::<1, true>(row, rgb),
            (2, true) => write::<2, true>(row, rgb),
            (3, true) => write::<3, true>(row, rgb),
            (_, true) => write::<4, true>(row, rgb),
            (_, false) => write::<4, false>(row, rgb),
        }
        Ok(())
    }
}

/// [`RowLayout::write_rgb`] for one layout, so that the loop has no branches on it.
fn write<const CHANNELS: usize, const SIXTEEN_BIT: bool>(row: &[u8], rgb: &mut [u8]) {
    let bytes = CHANNELS * if SIXTEEN_BIT { 2 } else { 1 };
    for (px, out) in row.chunks_exact(bytes).zip(rgb.chunks_exact_mut(3)) {
        let sample = |channel: usize| {
            if SIXTEEN_BIT {
                to_8_bits(px[2 * channel], px[2 * channel + 1])
            } else {
                px[channel]
            }
        };
        let (colour, alpha) = match CHANNELS {
            1 => ([sample(0); 3], 255),
            2 => ([sample(0); 3], sample(1)),
            3 => ([sample(0), sample(1), sample(2)], 255),
            _ => ([sample(0), sample(1), sample(2)], sample(3)),
        };
        out.copy_from_slice(&colour.map(|c| over_white(c, alpha)));
    }
}

/// RGBA8 pixels as RGB8, alpha flattened onto white.
pub fn flatten_rgba_on_white(rgba: &[u8]) -> Vec<u8> {
    let mut rgb = vec![0; rgba.len() / 4 * 3];
    RowLayout {
        channels: 4,
        sixteen_bit: false,
    }
    .write_rgb(&rgba[..rgba.len() / 4 * 4], &mut rgb)
    .expect("sized to match");
    rgb
}

/// A square taken from the source, in source pixels (fractions allowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    pub left: f64,
    pub top: f64,
    pub side: f64,
}

/// Resizes `crop` of a `width`×`height` RGB8 image to `size`×`size` in one bilinear pass.
pub fn resize_crop_rgb(
    rgb: &[u8],
    width: u32,
    height: u32,
    crop: Crop,
    size: u32,
) -> Result<Vec<u8>, String> {
    let src = ImageRef::new(width, height, rgb, PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut dst = Image::new(size, size, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left, crop.top, crop.side, crop.side);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| e.to_string())?;
    Ok(dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_samples_round_and_alpha_flattens_onto_white() {
        let layout = RowLayout {
            channels: 4,
            sixteen_bit: true,
        };
        let mut out = [0; 6];
        // Opaque samples round (0x10A0 → 17, where its high byte is 16); transparent is white.
        layout
            .write_rgb(
                &[
                    0x80, 0x80, 0x10, 0xA0, 0x00, 0x00, 0xFF, 0xFF, 1, 2, 3, 4, 5, 6, 0, 0,
                ],
                &mut out,
            )
            .unwrap();
        assert_eq!(out, [128, 17, 0, 255, 255, 255]);
        let mut grey = [0; 9];
        let grey_alpha = RowLayout {
            channels: 2,
            sixteen_bit: false,
        };
        grey_alpha
            .write_rgb(&[10, 255, 10, 0, 10, 128], &mut grey)
            .unwrap();
        assert_eq!(grey, [10, 10, 10, 255, 255, 255, 132, 132, 132]);
        assert!(grey_alpha.write_rgb(&[10, 255, 10], &mut grey).is_err());
    }
}
