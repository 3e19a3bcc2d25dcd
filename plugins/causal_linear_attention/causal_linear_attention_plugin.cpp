// TensorRT IPluginV3 glue for linexport::CausalLinearAttention. Spec: README.md.
//
// Every entry point is noexcept and catches everything: no exception may cross into TensorRT.
// Bad dtypes and shapes are refused while the engine is built (supportsFormatCombination,
// getOutputShapes, configurePlugin) with a message naming the tensor, what was expected and
// what was found; enqueue only reports launch failures.
#include "causal_linear_attention_plugin.h"

#include "causal_linear_attention.h"
#include "plugin_library.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

namespace linexport
{
namespace trt
{
namespace
{

using nvinfer1::DataType;
using Severity = nvinfer1::ILogger::Severity;

constexpr int32_t kNbInputs = 4;
constexpr int32_t kNbOutputs = 2;
constexpr int32_t kMaxHeads = 65535;
char const* const kInputNames[kNbInputs] = {"query", "key", "value", "past_state"};
char const* const kOutputNames[kNbOutputs] = {"output", "present_state"};

void logError(std::string const& message) noexcept
{
    log(Severity::kERROR, (std::string(kPluginName) + ": " + message).c_str());
}

char const* typeName(DataType t) noexcept
{
    switch (t)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    default: return "another type";
    }
}

char const* tensorName(int32_t pos) noexcept
{
    return pos < kNbInputs ? kInputNames[pos] : kOutputNames[pos - kNbInputs];
}

// bfloat16 tensor-core kernels need sm_80. Without a visible GPU (e.g. checking a plugin on a
// CPU-only machine) nothing is known, so nothing is refused.
bool deviceSupportsBf16() noexcept
{
    int device = 0;
    int major = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    {
        cudaGetLastError(); // clear, so the error is not reported by someone else's later call
        return true;
    }
    return major >= 8;
}

bool isActivationType(DataType t) noexcept
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

std::string dimsToString(nvinfer1::Dims const& d)
{
    std::ostringstream s;
    s << "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s << (i ? ", " : "") << d.d[i];
    }
    s << "]";
    return s.str();
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Plugin

CausalLinearAttentionPlugin::CausalLinearAttentionPlugin(int32_t numHeads, float eps, int32_t normalize)
    : mNumHeads(numHeads)
    , mEps(eps)
    , mNormalize(normalize)
{
    refreshSerialFields();
}

void CausalLinearAttentionPlugin::refreshSerialFields() noexcept
{
    // The fields point at this object's members: rebuilt per object, never copied.
    mSerialFields.clear();
    mSerialFields.emplace_back(kFieldNumHeads, &mNumHeads, nvinfer1::PluginFieldType::kINT32, 1);
    mSerialFields.emplace_back(kFieldEps, &mEps, nvinfer1::PluginFieldType::kFLOAT32, 1);
    mSerialFields.emplace_back(kFieldNormalize, &mNormalize, nvinfer1::PluginFieldType::kINT32, 1);
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
}

nvinfer1::IPluginCapability* CausalLinearAttentionPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* CausalLinearAttentionPlugin::clone() noexcept
{
    try
    {
        return new CausalLinearAttentionPlugin(mNumHeads, mEps, mNormalize);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* CausalLinearAttentionPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* CausalLinearAttentionPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* CausalLinearAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t CausalLinearAttentionPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

int32_t CausalLinearAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        logError("expected 4 inputs (query, key, value, past_state) and 2 outputs, got " + std::to_string(nbInputs)
            + " and " + std::to_string(nbOutputs));
        return -1;
    }
    if (!isActivationType(inputTypes[0]))
    {
        logError(std::string("query must be float32, float16 or bfloat16, got ") + typeName(inputTypes[0]));
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = DataType::kFLOAT; // the state is fp32 whatever the activations are
    return 0;
}

int32_t CausalLinearAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            logError("expected 4 inputs and 2 outputs, got " + std::to_string(nbInputs) + " and "
                + std::to_string(nbOutputs));
            return -1;
        }
        int32_t const ranks[kNbInputs] = {3, 3, 3, 4};
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            if (inputs[i].nbDims != ranks[i])
            {
                logError(std::string(kInputNames[i]) + " must have rank " + std::to_string(ranks[i]) + ", got rank "
                    + std::to_string(inputs[i].nbDims));
                return -1;
            }
        }
        // Static feature sizes are checked here already; the rest in configurePlugin.
        for (int32_t i : {0, 2})
        {
            nvinfer1::IDimensionExpr const* last = inputs[i].d[2];
            if (last->isConstant() && last->getConstantValue() % mNumHeads != 0)
            {
                logError(std::string(kInputNames[i]) + "'s last dimension (num_heads * head_dim) is "
                    + std::to_string(last->getConstantValue()) + ", not a multiple of num_heads = "
                    + std::to_string(mNumHeads));
                return -1;
            }
        }
        // output [B, T, H*Dv] like value; present_state like past_state.
        outputs[0] = inputs[2];
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = inputs[0].d[1];
        outputs[1] = inputs[3];
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getOutputShapes failed: ") + e.what());
    }
    return -1;
}

bool CausalLinearAttentionPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs)
        {
            return false;
        }
        nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != nvinfer1::TensorFormat::kLINEAR)
        {
            return false;
        }
        bool ok = false;
        char const* expected = "";
        switch (pos)
        {
        case 0:
            ok = isActivationType(desc.type) && (desc.type != DataType::kBF16 || deviceSupportsBf16());
            expected = "float32, float16, or bfloat16 on sm_80 and newer";
            break;
        case 1:
        case 2:
        case 4:
            ok = desc.type == inOut[0].desc.type;
            expected = typeName(inOut[0].desc.type);
            break;
        default: // past_state, present_state
            ok = desc.type == DataType::kFLOAT;
            expected = "float32";
            break;
        }
        if (!ok)
        {
            // TensorRT probes many combinations; a refusal is routine, hence verbose.
            log(Severity::kVERBOSE,
                (std::string(kPluginName) + ": " + tensorName(pos) + " as " + typeName(desc.type)
                    + " is not supported (expected " + expected + ")")
                    .c_str());
        }
        return ok;
    }
    catch (...)
    {
        return false;
    }
}

bool CausalLinearAttentionPlugin::checkShapes(
    nvinfer1::Dims const* dims, int32_t nbInputs, char const* what) const noexcept
{
    try
    {
        if (nbInputs != kNbInputs)
        {
            logError(std::string(what) + ": expected 4 inputs, got " + std::to_string(nbInputs));
            return false;
        }
        nvinfer1::Dims const& q = dims[0];
        nvinfer1::Dims const& k = dims[1];
        nvinfer1::Dims const& v = dims[2];
        nvinfer1::Dims const& s = dims[3];
        int32_t const ranks[kNbInputs] = {3, 3, 3, 4};
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            if (dims[i].nbDims != ranks[i])
            {
                logError(std::string(what) + ": " + kInputNames[i] + " must have rank " + std::to_string(ranks[i])
                    + ", got " + dimsToString(dims[i]));
                return false;
            }
        }
        auto known = [](int64_t d) { return d >= 0; };
        auto mismatch = [&](char const* a, int64_t x, char const* b, int64_t y) {
            logError(std::string(what) + ": " + a + " = " + std::to_string(x) + " must equal " + b + " = "
                + std::to_string(y) + " (query " + dimsToString(q) + ", key " + dimsToString(k) + ", value "
                + dimsToString(v) + ", past_state " + dimsToString(s) + ")");
            return false;
        };
        int64_t const H = mNumHeads;
        int64_t Dk = -1;
        int64_t Dv = -1;
        for (int32_t i : {0, 2})
        {
            int64_t const last = dims[i].d[2];
            if (!known(last))
            {
                continue;
            }
            if (last % H != 0 || last / H < 1 || last / H > LINEXPORT_CLA_MAX_HEAD_DIM)
            {
                logError(std::string(what) + ": " + kInputNames[i] + "'s last dimension must be num_heads ("
                    + std::to_string(H) + ") * head_dim with head_dim in [1, 256], got " + std::to_string(last));
                return false;
            }
            (i == 0 ? Dk : Dv) = last / H;
        }
        if (known(q.d[2]) && known(k.d[2]) && q.d[2] != k.d[2])
        {
            return mismatch("key.shape[2]", k.d[2], "query.shape[2]", q.d[2]);
        }
        for (int32_t i : {1, 2, 3})
        {
            if (known(q.d[0]) && known(dims[i].d[0]) && dims[i].d[0] != q.d[0])
            {
                return mismatch((std::string(kInputNames[i]) + ".shape[0]").c_str(), dims[i].d[0], "query.shape[0]",
                    q.d[0]);
            }
        }
        for (int32_t i : {1, 2})
        {
            if (known(q.d[1]) && known(dims[i].d[1]) && dims[i].d[1] != q.d[1])
            {
                return mismatch((std::string(kInputNames[i]) + ".shape[1]").c_str(), dims[i].d[1], "query.shape[1]",
                    q.d[1]);
            }
        }
        if (known(s.d[1]) && s.d[1] != H)
        {
            return mismatch("past_state.shape[1]", s.d[1], "num_heads", H);
        }
        if (Dk >= 0 && known(s.d[2]) && s.d[2] != Dk)
        {
            return mismatch("past_state.shape[2]", s.d[2], "head_dim_k = query.shape[2] / num_heads", Dk);
        }
        if (Dv >= 0 && known(s.d[3]) && s.d[3] != Dv + mNormalize)
        {
            return mNormalize
                ? mismatch("past_state.shape[3]", s.d[3], "head_dim_v + 1 = value.shape[2] / num_heads + 1", Dv + 1)
                : mismatch("past_state.shape[3]", s.d[3], "head_dim_v = value.shape[2] / num_heads (normalize=0)", Dv);
        }
        int64_t const int32Max = std::numeric_limits<int32_t>::max();
        if ((known(q.d[0]) && q.d[0] > kMaxHeads) || (known(q.d[1]) && q.d[1] > int32Max))
        {
            logError(std::string(what) + ": batch must be <= 65535 and sequence length < 2^31, got query "
                + dimsToString(q));
            return false;
        }
        return true;
    }
    catch (std::exception const& e)
    {
        logError(std::string(what) + " failed: " + e.what());
    }
    return false;
}

int32_t CausalLinearAttentionPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        logError("expected 4 inputs and 2 outputs, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        return -1;
    }
    DataType const t = in[0].desc.type;
    if (!isActivationType(t))
    {
        logError(std::string("query must be float32, float16 or bfloat16, got ") + typeName(t));
        return -1;
    }
    for (int32_t pos = 0; pos < kNbInputs + kNbOutputs; ++pos)
    {
        DataType const got = pos < kNbInputs ? in[pos].desc.type : out[pos - kNbInputs].desc.type;
        DataType const want = (pos == 3 || pos == 5) ? DataType::kFLOAT : t;
        if (got != want)
        {
            logError(std::string(tensorName(pos)) + " must be " + typeName(want) + ", got " + typeName(got));
            return -1;
        }
    }
    nvinfer1::Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    return checkShapes(dims, nbInputs, "configurePlugin") ? 0 : -1;
}

size_t CausalLinearAttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /*inputs*/,
    int32_t /*nbInputs*/, nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0; // the kernels carry the state in registers / shared memory: no scratch buffers
}

char const* CausalLinearAttentionPlugin::getMetadataString() noexcept
{
    try
    {
        std::ostringstream s;
        s << "num_heads=" << mNumHeads << " eps=" << mEps << " normalize=" << mNormalize;
        mMetadata = s.str();
        return mMetadata.c_str();
    }
    catch (...)
    {
        return nullptr;
    }
}

int32_t CausalLinearAttentionPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    if (nbInputs != kNbInputs)
    {
        logError("expected 4 inputs, got " + std::to_string(nbInputs));
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    return checkShapes(dims, nbInputs, "onShapeChange") ? 0 : -1;
}

int32_t CausalLinearAttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        nvinfer1::Dims const& q = inputDesc[0].dims;
        nvinfer1::Dims const& v = inputDesc[2].dims;
        if (q.d[0] == 0)
        {
            return 0; // empty batch: nothing to compute
        }
        LinexportCausalLinearAttentionParams p{};
        p.q = inputs[0];
        p.k = inputs[1];
        p.v = inputs[2];
        p.past_state = static_cast<float const*>(inputs[3]);
        p.o = outputs[0];
        p.present_state = static_cast<float*>(outputs[1]);
        p.lengths = nullptr;
        p.batch = static_cast<int32_t>(q.d[0]);
        p.seq_len = static_cast<int32_t>(q.d[1]);
        p.num_heads = mNumHeads;
        p.head_dim_k = static_cast<int32_t>(q.d[2] / mNumHeads);
        p.head_dim_v = static_cast<int32_t>(v.d[2] / mNumHeads);
        p.eps = mEps;
        p.normalize = mNormalize;
        switch (inputDesc[0].type)
        {
        case DataType::kHALF: p.dtype = LINEXPORT_FLOAT16; break;
        case DataType::kBF16: p.dtype = LINEXPORT_BFLOAT16; break;
        default: p.dtype = LINEXPORT_FLOAT32; break;
        }
        linexport_cla_set_packed_strides(&p);
        if (char const* bad = linexport_cla_check_params(&p))
        {
            logError(std::string("enqueue: ") + bad);
            return -1;
        }
        cudaError_t const err = linexport_cla_forward(&p, stream);
        if (err != cudaSuccess)
        {
            logError(std::string("kernel launch failed: ") + cudaGetErrorString(err));
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("enqueue failed: ") + e.what());
    }
    return -1;
}

nvinfer1::IPluginV3* CausalLinearAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

nvinfer1::PluginFieldCollection const* CausalLinearAttentionPlugin::getFieldsToSerialize() noexcept
{
    return &mSerialCollection;
}

// ---------------------------------------------------------------------------------------------
// Creator

CausalLinearAttentionCreator::CausalLinearAttentionCreator()
{
    mFields.emplace_back(kFieldNumHeads, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back(kFieldEps, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back(kFieldNormalize, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

char const* CausalLinearAttentionCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* CausalLinearAttentionCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* CausalLinearAttentionCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

nvinfer1::PluginFieldCollection const* CausalLinearAttentionCreator::getFieldNames() noexcept
{
    return &mCollection;
}

namespace
{

// Reads a one-element integer field of any integer width (the ONNX parser passes kINT32).
bool readInt(nvinfer1::PluginField const& f, int64_t* value) noexcept
{
    switch (f.type)
    {
    case nvinfer1::PluginFieldType::kINT8: *value = *static_cast<int8_t const*>(f.data); return true;
    case nvinfer1::PluginFieldType::kINT16: *value = *static_cast<int16_t const*>(f.data); return true;
    case nvinfer1::PluginFieldType::kINT32: *value = *static_cast<int32_t const*>(f.data); return true;
    case nvinfer1::PluginFieldType::kINT64: *value = *static_cast<int64_t const*>(f.data); return true;
    default: return false;
    }
}

// Reads a one-element float field (the ONNX parser passes kFLOAT32).
bool readFloat(nvinfer1::PluginField const& f, double* value) noexcept
{
    switch (f.type)
    {
    case nvinfer1::PluginFieldType::kFLOAT32: *value = *static_cast<float const*>(f.data); return true;
    case nvinfer1::PluginFieldType::kFLOAT64: *value = *static_cast<double const*>(f.data); return true;
    default: return false;
    }
}

} // namespace

nvinfer1::IPluginV3* CausalLinearAttentionCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // The build and runtime phases get the same fields: the ones getFieldsToSerialize gives.
        bool haveHeads = false;
        int64_t numHeads = 0;
        double eps = kDefaultEps;
        int64_t normalize = kDefaultNormalize;
        int32_t const n = fc == nullptr ? 0 : fc->nbFields;
        for (int32_t i = 0; i < n; ++i)
        {
            nvinfer1::PluginField const& f = fc->fields[i];
            std::string const fieldName = f.name == nullptr ? "" : f.name;
            if (fieldName != kFieldNumHeads && fieldName != kFieldEps && fieldName != kFieldNormalize)
            {
                logError("unknown field '" + fieldName
                    + "': expected num_heads (int), eps (float) and normalize (int 0 or 1)");
                return nullptr;
            }
            if (f.data == nullptr || f.length != 1)
            {
                logError("field " + fieldName + " must hold exactly one value, got length " + std::to_string(f.length)
                    + (f.data == nullptr ? " and no data" : ""));
                return nullptr;
            }
            if (fieldName == kFieldNumHeads)
            {
                if (!readInt(f, &numHeads))
                {
                    logError("field num_heads must be an integer (kINT32 or kINT64)");
                    return nullptr;
                }
                haveHeads = true;
            }
            else if (fieldName == kFieldNormalize)
            {
                if (!readInt(f, &normalize))
                {
                    logError("field normalize must be an integer (kINT32 or kINT64)");
                    return nullptr;
                }
            }
            else if (!readFloat(f, &eps))
            {
                logError("field eps must be a float (kFLOAT32 or kFLOAT64)");
                return nullptr;
            }
        }
        if (!haveHeads)
        {
            logError("field num_heads is required (the ONNX node's num_heads attribute)");
            return nullptr;
        }
        if (numHeads < 1 || numHeads > kMaxHeads)
        {
            logError("num_heads must be in [1, 65535], got " + std::to_string(numHeads));
            return nullptr;
        }
        if (!std::isfinite(eps) || eps < 0.0 || eps > std::numeric_limits<float>::max())
        {
            logError("eps must be finite and >= 0, got " + std::to_string(eps));
            return nullptr;
        }
        if (normalize != 0 && normalize != 1)
        {
            logError("normalize must be 0 or 1, got " + std::to_string(normalize));
            return nullptr;
        }
        return new CausalLinearAttentionPlugin(
            static_cast<int32_t>(numHeads), static_cast<float>(eps), static_cast<int32_t>(normalize));
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

} // namespace trt
} // namespace linexport
