// Test driver: loads the plugin library into a real TensorRT plugin registry (the one inside
// libnvinfer_lean / libnvinfer, found by dlopen) and exercises the IPluginV3 interfaces that
// TensorRT's Python bindings do not reach for C++ plugins: field serialization round trip,
// clone, output types, format support, configurePlugin / onShapeChange shape checks.
// No GPU needed; enqueue is not called. Prints one "PASS name" / "FAIL name: why" per check and
// exits non-zero if any failed. Built by tests/plugins/test_trt_plugin.py against TensorRT's headers.
//
// usage: plugin_driver LIBNVINFER_PATH PLUGIN_LIBRARY_PATH
#include "NvInferRuntime.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void check(bool ok, char const* name, std::string const& why = "")
{
    std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, ok || why.empty() ? "" : ": ", ok ? "" : why.c_str());
    gFailures += ok ? 0 : 1;
}

struct Fields
{
    std::vector<PluginField> list;
    PluginFieldCollection fc{};
    PluginFieldCollection const* get()
    {
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
        return &fc;
    }
};

// Reads num_heads / eps (and normalize, into `normalize` when given) back from a field
// collection (as the plugin serialized them).
bool readFields(PluginFieldCollection const* fc, int32_t* heads, float* eps, int32_t* normalize = nullptr)
{
    bool gotHeads = false;
    bool gotEps = false;
    bool gotNormalize = false;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (std::strcmp(f.name, "num_heads") == 0 && f.type == PluginFieldType::kINT32 && f.length == 1)
        {
            *heads = *static_cast<int32_t const*>(f.data);
            gotHeads = true;
        }
        if (std::strcmp(f.name, "eps") == 0 && f.type == PluginFieldType::kFLOAT32 && f.length == 1)
        {
            *eps = *static_cast<float const*>(f.data);
            gotEps = true;
        }
        if (std::strcmp(f.name, "normalize") == 0 && f.type == PluginFieldType::kINT32 && f.length == 1)
        {
            if (normalize != nullptr)
            {
                *normalize = *static_cast<int32_t const*>(f.data);
            }
            gotNormalize = true;
        }
    }
    return gotHeads && gotEps && gotNormalize && fc->nbFields == 3;
}

Dims dims(std::vector<int64_t> const& d)
{
    Dims out{};
    out.nbDims = static_cast<int32_t>(d.size());
    for (size_t i = 0; i < d.size(); ++i)
    {
        out.d[i] = d[i];
    }
    return out;
}

DynamicPluginTensorDesc desc(DataType t, Dims const& d, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc x{};
    x.desc.type = t;
    x.desc.format = format;
    x.desc.dims = d;
    x.min = d;
    x.max = d;
    x.opt = d;
    return x;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: %s LIBNVINFER_PATH PLUGIN_LIBRARY_PATH\n", argv[0]);
        return 2;
    }
    void* trt = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (trt == nullptr)
    {
        std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 2;
    }
    auto getRegistry = reinterpret_cast<IPluginRegistry* (*) ()>(dlsym(trt, "getPluginRegistry"));
    check(getRegistry != nullptr, "tensorrt_exports_getPluginRegistry");
    if (getRegistry == nullptr)
    {
        return 1;
    }
    IPluginRegistry* registry = getRegistry();
    check(registry->loadLibrary(argv[2]) != nullptr, "registry_loadLibrary");

    IPluginCreatorInterface* any = registry->getCreator("CausalLinearAttention", "1", "");
    check(any != nullptr, "creator_found_by_name_version_namespace");
    if (any == nullptr)
    {
        return 1;
    }
    check(std::strcmp(any->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator_is_v3one",
        any->getInterfaceInfo().kind);
    auto* creator = static_cast<IPluginCreatorV3One*>(any);
    check(std::strcmp(creator->getPluginName(), "CausalLinearAttention") == 0
            && std::strcmp(creator->getPluginVersion(), "1") == 0 && std::strcmp(creator->getPluginNamespace(), "") == 0,
        "creator_name_version_namespace");

    PluginFieldCollection const* names = creator->getFieldNames();
    check(names != nullptr && names->nbFields == 3 && std::strcmp(names->fields[0].name, "num_heads") == 0
            && names->fields[0].type == PluginFieldType::kINT32 && std::strcmp(names->fields[1].name, "eps") == 0
            && names->fields[1].type == PluginFieldType::kFLOAT32 && std::strcmp(names->fields[2].name, "normalize") == 0
            && names->fields[2].type == PluginFieldType::kINT32,
        "creator_field_names");

    int32_t const heads = 4;
    float const eps = 1e-3F;
    Fields build;
    build.list.emplace_back("num_heads", &heads, PluginFieldType::kINT32, 1);
    build.list.emplace_back("eps", &eps, PluginFieldType::kFLOAT32, 1);
    IPluginV3* plugin = creator->createPlugin("cla", build.get(), TensorRTPhase::kBUILD);
    check(plugin != nullptr, "create_plugin_build_phase");
    if (plugin == nullptr)
    {
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* bld = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core != nullptr && bld != nullptr && rt != nullptr, "capabilities_core_build_runtime");
    check(std::strcmp(core->getPluginName(), "CausalLinearAttention") == 0
            && std::strcmp(core->getPluginVersion(), "1") == 0 && std::strcmp(core->getPluginNamespace(), "") == 0,
        "plugin_name_version_namespace");

    // Serialization round trip: the fields a built engine stores, fed back in the runtime phase.
    int32_t gotHeads = 0;
    float gotEps = 0.F;
    PluginFieldCollection const* serial = rt->getFieldsToSerialize();
    check(readFields(serial, &gotHeads, &gotEps) && gotHeads == heads && gotEps == eps, "fields_to_serialize",
        "got num_heads=" + std::to_string(gotHeads) + " eps=" + std::to_string(gotEps));
    IPluginV3* restored = creator->createPlugin("cla", serial, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "create_plugin_runtime_phase_from_serialized_fields");
    if (restored != nullptr)
    {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        gotHeads = 0;
        gotEps = 0.F;
        check(readFields(rt2->getFieldsToSerialize(), &gotHeads, &gotEps) && gotHeads == heads && gotEps == eps,
            "serialization_round_trip");
        delete restored;
    }
    IPluginV3* cloned = plugin->clone();
    check(cloned != nullptr, "clone");
    if (cloned != nullptr)
    {
        auto* rt3 = static_cast<IPluginV3OneRuntime*>(cloned->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(readFields(rt3->getFieldsToSerialize(), &gotHeads, &gotEps) && gotHeads == heads && gotEps == eps,
            "clone_keeps_fields");
        delete cloned; // the clone's fields must not point into the original (and vice versa)
        check(readFields(rt->getFieldsToSerialize(), &gotHeads, &gotEps) && gotHeads == heads, "original_after_clone_deleted");
    }
    IPluginV3* attached = rt->attachToContext(nullptr);
    check(attached != nullptr, "attach_to_context_clones");
    delete attached;

    // Output types: the activation type, then fp32 state.
    check(bld->getNbOutputs() == 2, "two_outputs");
    DataType inTypes[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kFLOAT};
    DataType outTypes[2] = {};
    check(bld->getOutputDataTypes(outTypes, 2, inTypes, 4) == 0 && outTypes[0] == DataType::kHALF
            && outTypes[1] == DataType::kFLOAT,
        "output_types_half");
    DataType intTypes[4] = {DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kFLOAT};
    check(bld->getOutputDataTypes(outTypes, 2, intTypes, 4) != 0, "output_types_reject_int32");
    check(bld->getWorkspaceSize(nullptr, 4, nullptr, 2) == 0, "workspace_zero");

    // Format support, position by position (TensorRT fills inOut[0..pos] before asking).
    Dims const q = dims({2, -1, 256});
    Dims const v = dims({2, -1, 128});
    Dims const s = dims({2, 4, 64, 33});
    auto combo = [&](DataType act, DataType state) {
        return std::vector<DynamicPluginTensorDesc>{desc(act, q), desc(act, q), desc(act, v), desc(state, s),
            desc(act, v), desc(state, s)};
    };
    for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        auto io = combo(t, DataType::kFLOAT);
        bool all = true;
        for (int32_t pos = 0; pos < 6; ++pos)
        {
            all = all && bld->supportsFormatCombination(pos, io.data(), 4, 2);
        }
        check(all, "supports_activation_type", std::to_string(static_cast<int>(t)));
    }
    {
        auto io = combo(DataType::kINT8, DataType::kFLOAT);
        check(!bld->supportsFormatCombination(0, io.data(), 4, 2), "rejects_int8_query");
        io = combo(DataType::kHALF, DataType::kHALF);
        check(!bld->supportsFormatCombination(3, io.data(), 4, 2), "rejects_half_state");
        io = combo(DataType::kHALF, DataType::kFLOAT);
        io[1].desc.type = DataType::kFLOAT;
        check(!bld->supportsFormatCombination(1, io.data(), 4, 2), "rejects_key_type_unlike_query");
        io = combo(DataType::kHALF, DataType::kFLOAT);
        io[0].desc.format = TensorFormat::kHWC8;
        check(!bld->supportsFormatCombination(0, io.data(), 4, 2), "rejects_non_linear_format");
    }

    // configurePlugin: shapes and types checked at build time.
    {
        auto io = combo(DataType::kHALF, DataType::kFLOAT);
        check(bld->configurePlugin(io.data(), 4, io.data() + 4, 2) == 0, "configure_valid");
        auto bad = io;
        bad[0].desc.dims = dims({2, -1, 250});
        bad[1].desc.dims = bad[0].desc.dims;
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_dim_not_multiple_of_heads");
        bad = io;
        bad[3].desc.dims = dims({2, 4, 64, 32});
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_state_without_z_column");
        bad = io;
        bad[3].desc.dims = dims({2, 3, 64, 33});
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_state_heads");
        bad = io;
        bad[1].desc.dims = dims({2, -1, 128});
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_key_unlike_query");
        bad = io;
        bad[0].desc.dims = dims({2, -1, 4 * 300});
        bad[1].desc.dims = bad[0].desc.dims;
        bad[3].desc.dims = dims({2, 4, 300, 33});
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_head_dim_over_256");
        bad = io;
        bad[2].desc.dims = dims({3, -1, 128});
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_batch_mismatch");
        bad = io;
        bad[0].desc.dims = dims({2, 256});
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_rank");
        bad = io;
        bad[3].desc.type = DataType::kHALF;
        check(bld->configurePlugin(bad.data(), 4, bad.data() + 4, 2) != 0, "configure_rejects_half_state");
        check(bld->configurePlugin(io.data(), 3, io.data() + 3, 2) != 0, "configure_rejects_three_inputs");
    }

    // onShapeChange: the concrete shapes of a run.
    {
        PluginTensorDesc in[4] = {};
        PluginTensorDesc out[2] = {};
        Dims const concrete[4] = {dims({2, 7, 256}), dims({2, 7, 256}), dims({2, 7, 128}), dims({2, 4, 64, 33})};
        for (int i = 0; i < 4; ++i)
        {
            in[i].dims = concrete[i];
            in[i].type = i == 3 ? DataType::kFLOAT : DataType::kHALF;
            in[i].format = TensorFormat::kLINEAR;
        }
        check(rt->onShapeChange(in, 4, out, 2) == 0, "shape_change_valid");
        in[1].dims = dims({2, 8, 256});
        check(rt->onShapeChange(in, 4, out, 2) != 0, "shape_change_rejects_time_mismatch");
    }

    // Creator field validation.
    {
        int64_t const heads64 = 8;
        double const eps64 = 1e-5;
        Fields f;
        f.list.emplace_back("num_heads", &heads64, PluginFieldType::kINT64, 1);
        f.list.emplace_back("eps", &eps64, PluginFieldType::kFLOAT64, 1);
        IPluginV3* p = creator->createPlugin("cla", f.get(), TensorRTPhase::kBUILD);
        check(p != nullptr, "accepts_int64_heads_and_float64_eps");
        if (p != nullptr)
        {
            auto* r = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            check(readFields(r->getFieldsToSerialize(), &gotHeads, &gotEps) && gotHeads == 8
                    && std::fabs(gotEps - 1e-5F) < 1e-12F,
                "int64_float64_fields_stored");
            delete p;
        }
        Fields defaults;
        defaults.list.emplace_back("num_heads", &heads, PluginFieldType::kINT32, 1);
        p = creator->createPlugin("cla", defaults.get(), TensorRTPhase::kBUILD);
        check(p != nullptr, "eps_is_optional");
        if (p != nullptr)
        {
            auto* r = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            int32_t gotNormalize = -1;
            check(readFields(r->getFieldsToSerialize(), &gotHeads, &gotEps, &gotNormalize) && gotEps == 1e-6F,
                "eps_defaults_to_1e-6");
            check(gotNormalize == 1, "normalize_defaults_to_1", "got " + std::to_string(gotNormalize));
            delete p;
        }
        // The unnormalised form: the field round-trips, and the state has no z column.
        int32_t const off = 0;
        Fields unnormalised;
        unnormalised.list.emplace_back("num_heads", &heads, PluginFieldType::kINT32, 1);
        unnormalised.list.emplace_back("normalize", &off, PluginFieldType::kINT32, 1);
        p = creator->createPlugin("cla", unnormalised.get(), TensorRTPhase::kBUILD);
        check(p != nullptr, "accepts_normalize_0");
        if (p != nullptr)
        {
            auto* r = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            int32_t gotNormalize = -1;
            check(readFields(r->getFieldsToSerialize(), &gotHeads, &gotEps, &gotNormalize) && gotNormalize == 0,
                "normalize_0_stored");
            IPluginV3* restored0 = creator->createPlugin("cla", r->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
            check(restored0 != nullptr, "normalize_0_round_trip");
            delete restored0;
            auto* b0 = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
            auto io = combo(DataType::kHALF, DataType::kFLOAT);
            check(b0->configurePlugin(io.data(), 4, io.data() + 4, 2) != 0, "unnormalised_rejects_state_with_z_column");
            io[3].desc.dims = dims({2, 4, 64, 32});
            io[4 + 1].desc.dims = io[3].desc.dims;
            check(b0->configurePlugin(io.data(), 4, io.data() + 4, 2) == 0, "unnormalised_configure_valid");
            delete p;
        }
        int32_t const bad2 = 2;
        Fields badNormalize;
        badNormalize.list.emplace_back("num_heads", &heads, PluginFieldType::kINT32, 1);
        badNormalize.list.emplace_back("normalize", &bad2, PluginFieldType::kINT32, 1);
        check(creator->createPlugin("cla", badNormalize.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_normalize_2");
        int32_t const zero = 0;
        int32_t const two[2] = {4, 4};
        float const nan = std::nanf("");
        float const negative = -1.F;
        Fields missing;
        missing.list.emplace_back("eps", &eps, PluginFieldType::kFLOAT32, 1);
        check(creator->createPlugin("cla", missing.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_missing_num_heads");
        Fields zeroHeads;
        zeroHeads.list.emplace_back("num_heads", &zero, PluginFieldType::kINT32, 1);
        check(creator->createPlugin("cla", zeroHeads.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_zero_heads");
        Fields nanEps;
        nanEps.list.emplace_back("num_heads", &heads, PluginFieldType::kINT32, 1);
        nanEps.list.emplace_back("eps", &nan, PluginFieldType::kFLOAT32, 1);
        check(creator->createPlugin("cla", nanEps.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_nan_eps");
        Fields negEps;
        negEps.list.emplace_back("num_heads", &heads, PluginFieldType::kINT32, 1);
        negEps.list.emplace_back("eps", &negative, PluginFieldType::kFLOAT32, 1);
        check(creator->createPlugin("cla", negEps.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_negative_eps");
        Fields floatHeads;
        floatHeads.list.emplace_back("num_heads", &eps, PluginFieldType::kFLOAT32, 1);
        check(creator->createPlugin("cla", floatHeads.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_float_heads");
        Fields twoHeads;
        twoHeads.list.emplace_back("num_heads", two, PluginFieldType::kINT32, 2);
        check(creator->createPlugin("cla", twoHeads.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_two_values");
        Fields unknown;
        unknown.list.emplace_back("num_heads", &heads, PluginFieldType::kINT32, 1);
        unknown.list.emplace_back("chunk_size", &heads, PluginFieldType::kINT32, 1);
        check(creator->createPlugin("cla", unknown.get(), TensorRTPhase::kBUILD) == nullptr, "rejects_unknown_field");
        check(creator->createPlugin("cla", nullptr, TensorRTPhase::kBUILD) == nullptr, "rejects_no_fields");
    }

    delete plugin;
    std::printf("%d failed\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
