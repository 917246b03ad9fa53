use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
fn main() {
    for dt in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q4_0] {
        let w = Tensor::randn(0f32, 1.0, (64, 512), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 512), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dt).unwrap();
        let wd = q.dequantize(&Device::Cpu).unwrap();
        let exact = x.matmul(&wd.t().unwrap()).unwrap();
        let mm = QMatMul::from_qtensor(q).unwrap();
        let y = mm.forward(&x).unwrap();
        let err = (y.clone() - exact.clone()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // Row independence: row 1 alone vs in the batch.
        let y1 = mm.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
        let d1 = (y1 - y.narrow(0, 1, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        println!("{dt:?}: max err {err:.5} of scale {scale:.2} (rel {:.5}); batch-vs-alone {d1}", err / scale);
    }
}
