//! Where a view's pixels came from in the image it was found in.
//!
//! A view is the image cropped, shrunk, turned upright and cropped again
//! ([`super::normalise`]); each step moves pixels by a shift, a scale or a turn.
//! A [`Frame`] composes those steps, so a point found in a view (a corner that
//! verified a match, [`crate::verify::Agreement`]) can be shown where it lies in
//! the photo the client sent.

/// An affine map of the plane, `(x, y) -> (a x + b y + c, d x + e y + f)`.
/// Positions are continuous: pixel `(i, j)` covers `[i, i + 1) x [j, j + 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    m: [[f64; 3]; 2],
}

impl Frame {
    /// The map that moves nothing.
    pub const IDENTITY: Frame = Frame {
        m: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    };

    /// A shift by `(dx, dy)`.
    pub fn shift(dx: f64, dy: f64) -> Frame {
        Frame {
            m: [[1.0, 0.0, dx], [0.0, 1.0, dy]],
        }
    }

    /// A scale by `sx` across and `sy` down, about the origin.
    pub fn scale(sx: f64, sy: f64) -> Frame {
        Frame {
            m: [[sx, 0.0, 0.0], [0.0, sy, 0.0]],
        }
    }

    /// A turn by `angle` radians about the origin (positive: clockwise on
    /// screen, where y grows downwards).
    pub fn turn(angle: f64) -> Frame {
        let (sin, cos) = angle.sin_cos();
        Frame {
            m: [[cos, -sin, 0.0], [sin, cos, 0.0]],
        }
    }

    /// `self` applied first, then `next`.
    pub fn then(&self, next: &Frame) -> Frame {
        let (a, b) = (&next.m, &self.m);
        let row = |r: usize| {
            [
                a[r][0] * b[0][0] + a[r][1] * b[1][0],
                a[r][0] * b[0][1] + a[r][1] * b[1][1],
                a[r][0] * b[0][2] + a[r][1] * b[1][2] + a[r][2],
            ]
        };
        Frame {
            m: [row(0), row(1)],
        }
    }

    /// Bytes for storage: the six coefficients, row by row, as little-endian
    /// f64. A recorded mark keeps its views' frames, so a match can show where
    /// on the recorded image its corners lay.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.m
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// [`Frame::to_bytes`] read back; `None` unless `bytes` holds exactly six
    /// finite coefficients (a view stored before frames were kept has none).
    pub fn from_bytes(bytes: &[u8]) -> Option<Frame> {
        if bytes.len() != 48 {
            return None;
        }
        let mut at = bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of eight bytes")));
        let mut row = || [(); 3].map(|_| at.next().expect("six coefficients"));
        let m = [row(), row()];
        m.iter()
            .flatten()
            .all(|v| v.is_finite())
            .then_some(Frame { m })
    }

    /// Where `(x, y)` goes.
    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        let m = &self.m;
        [
            m[0][0] * x + m[0][1] * y + m[0][2],
            m[1][0] * x + m[1][1] * y + m[1][2],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(a: [f64; 2], b: [f64; 2]) -> bool {
        (a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9
    }

    #[test]
    fn steps_compose_in_order() {
        // Scale by 2, then shift by (10, 0): (1, 1) -> (2, 2) -> (12, 2).
        let f = Frame::scale(2.0, 2.0).then(&Frame::shift(10.0, 0.0));
        assert!(near(f.apply([1.0, 1.0]), [12.0, 2.0]));
        // The other order: (1, 1) -> (11, 1) -> (22, 2).
        let g = Frame::shift(10.0, 0.0).then(&Frame::scale(2.0, 2.0));
        assert!(near(g.apply([1.0, 1.0]), [22.0, 2.0]));
        // A quarter turn clockwise on screen takes right to down.
        let q = Frame::turn(std::f64::consts::FRAC_PI_2);
        assert!(near(q.apply([1.0, 0.0]), [0.0, 1.0]));
        assert!(near(
            Frame::IDENTITY.then(&q).apply([0.0, 1.0]),
            [-1.0, 0.0]
        ));
    }

    #[test]
    fn a_frame_survives_storage_and_bad_bytes_do_not_parse() {
        let f = Frame::turn(0.3)
            .then(&Frame::scale(2.5, 1.5))
            .then(&Frame::shift(-4.0, 7.25));
        let bytes = f.to_bytes();
        assert_eq!(bytes.len(), 48);
        assert_eq!(Frame::from_bytes(&bytes), Some(f));
        assert_eq!(Frame::from_bytes(&[]), None);
        assert_eq!(Frame::from_bytes(&bytes[..40]), None);
        let mut nan = bytes.clone();
        nan[..8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(Frame::from_bytes(&nan), None);
    }
}
