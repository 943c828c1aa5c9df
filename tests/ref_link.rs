//! The in-process reference links and reports the pinned version.
use attnrot::GgmlType;

#[test]
fn reference_is_the_pinned_ggml() {
    assert_eq!(attnrot_ref::version(), "0.25.3");
    assert_eq!(attnrot_ref::commit(), "0c1e57098");
    for ty in GgmlType::KV {
        let (b, s) = attnrot_ref::block_size_bytes(ty);
        assert_eq!((b, s), (ty.block_size(), ty.block_bytes()), "{ty}");
    }
    let x: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
    let q = attnrot_ref::quantize_row_cpu(GgmlType::Q8_0, &x);
    let y = attnrot_ref::dequantize_row(GgmlType::Q8_0, &q, 64);
    assert!((y[63] - 43.0).abs() < 0.5);
    println!("reference cpu features: {:?}", attnrot_ref::cpu_features());
}
