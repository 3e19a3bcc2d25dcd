// TensorRT IPluginV3 glue for linexport::CausalLinearAttention (spec: README.md).
//
// Only this file and its .cpp know TensorRT; the math is in the kernels behind
// causal_linear_attention.h. Built from TensorRT's headers alone: the library links no
// libnvinfer, so any TensorRT >= 10 process (the lean runtime included) can load it.
#ifndef LINEXPORT_CAUSAL_LINEAR_ATTENTION_PLUGIN_H
#define LINEXPORT_CAUSAL_LINEAR_ATTENTION_PLUGIN_H

#include "NvInferRuntime.h"

#include <string>
#include <vector>

namespace linexport
{
namespace trt
{

constexpr char const* kPluginName = "CausalLinearAttention";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";
constexpr char const* kFieldNumHeads = "num_heads";
constexpr char const* kFieldEps = "eps";
constexpr float kDefaultEps = 1e-6F;
constexpr char const* kFieldNormalize = "normalize";
constexpr int32_t kDefaultNormalize = 1; // a node without the attribute is the normalised form

class CausalLinearAttentionPlugin final : public nvinfer1::IPluginV3,
                                          public nvinfer1::IPluginV3OneCore,
                                          public nvinfer1::IPluginV3OneBuild,
                                          public nvinfer1::IPluginV3OneRuntime
{
public:
    CausalLinearAttentionPlugin(int32_t numHeads, float eps, int32_t normalize = kDefaultNormalize);
    ~CausalLinearAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    // Checks ranks and the dims that are known (>= 0); logs what is wrong. `what` names the caller.
    bool checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, char const* what) const noexcept;
    void refreshSerialFields() noexcept;

    int32_t mNumHeads;
    float mEps;
    int32_t mNormalize; // 1: state Dv+1 wide, o = u[:Dv] / (u[Dv] + eps); 0: state Dv wide, o = u
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
    std::string mMetadata;
};

class CausalLinearAttentionCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    CausalLinearAttentionCreator();
    ~CausalLinearAttentionCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace trt
} // namespace linexport

#endif // LINEXPORT_CAUSAL_LINEAR_ATTENTION_PLUGIN_H
