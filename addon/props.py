"""Scene properties: one PointerProperty, Scene.invr."""

import math

import bpy


class INVR_PG_settings(bpy.types.PropertyGroup):
    photo_path: bpy.props.StringProperty(
        name="Photo", description="Photo to turn into a relightable scene (PNG, JPEG, TIFF, WebP, EXR, HDR)",
        subtype="FILE_PATH")
    depth_path: bpy.props.StringProperty(
        name="Depth map", description="Planar depth of the photo as a single-channel EXR (Y)",
        subtype="FILE_PATH")
    normal_path: bpy.props.StringProperty(
        name="Normal map", description="Camera-frame unit normals of the photo as an RGB EXR (x right, y up, "
        "z towards the viewer)", subtype="FILE_PATH")
    fov_override: bpy.props.FloatProperty(
        name="Field of view", description="Horizontal field of view; 0 uses the photo's EXIF focal length "
        "or 60 degrees", default=0.0, min=0.0, max=179.0, subtype="NONE", unit="NONE")
    mesh_step: bpy.props.IntProperty(
        name="Mesh step", description="One vertex every N pixels: larger is lighter and coarser",
        default=1, min=1, max=16)
    discontinuity_threshold: bpy.props.FloatProperty(
        name="Discontinuity", description="Relative depth jump above which no faces join neighbouring "
        "pixels (keeps objects apart instead of stretching rubber sheets between them)",
        default=0.05, min=0.001, max=1.0, subtype="FACTOR")
    background_band: bpy.props.FloatProperty(
        name="Background layer", description="How far a hidden layer continues the background in behind "
        "foreground objects, as a share of the photo's longer side, so that new viewpoints show less emptiness "
        "beside them; 0: no layer", default=0.04, min=0.0, max=0.25, subtype="FACTOR")
    max_side: bpy.props.IntProperty(
        name="Working resolution", description="Longer side, in pixels, at which the networks see the photo "
        "(rounded to a multiple of 16); maps are brought back to the photo's full resolution",
        default=320, min=64, max=2048)
    sun_fraction: bpy.props.FloatProperty(
        name="Sun share", description="Share of the lighting's directional part given to a sun lamp, for "
        "sharp cast shadows; the rest stays in the environment", default=0.6, min=0.0, max=1.0,
        subtype="FACTOR")
    match_photo: bpy.props.BoolProperty(
        name="Match photo", description="Multiply the albedo by a gain (a node in the material) so that the scene "
        "renders as bright as the photo under the photo's own light: the mesh hides part of the sky from itself, "
        "which the photo's light already held", default=True)
    preview_sun_elevation: bpy.props.FloatProperty(
        name="Elevation", description="2D relight preview: sun height above the photo camera's horizon",
        default=math.radians(45.0), min=0.0, max=math.pi / 2, subtype="ANGLE", unit="ROTATION")
    preview_sun_azimuth: bpy.props.FloatProperty(
        name="Azimuth", description="2D relight preview: sun direction, 0 behind the photo camera (front "
        "light), 90° from its right, 180° in front of it (back light)", default=math.radians(90.0),
        min=-math.pi, max=2.0 * math.pi, subtype="ANGLE", unit="ROTATION")

    face_input_path: bpy.props.StringProperty(
        name="Video", description="Face video (MP4, MOV, AVI, ...), a single image, or a folder of frames",
        subtype="FILE_PATH")
    face_model_path: bpy.props.StringProperty(
        name="Face model", description="3D morphable face model: Surrey .bin (eos), BFM 2009 .mat, BFM 2017 .h5, "
        "FLAME .pkl or InvRender .npz", subtype="FILE_PATH")
    face_expressions_path: bpy.props.StringProperty(
        name="Expressions", description="Expression blendshapes of a Surrey .bin model; empty: the file beside "
        "the model, when there is one", subtype="FILE_PATH")
    face_frame_start: bpy.props.IntProperty(
        name="Start", description="First source frame to fit (0: the first frame of the video)",
        default=0, min=0)
    face_frame_end: bpy.props.IntProperty(
        name="End", description="Source frame to stop before; 0: to the end of the video", default=0, min=0)
    face_frame_step: bpy.props.IntProperty(
        name="Step", description="Fit every N-th frame (the keys are interpolated in between)",
        default=1, min=1, soft_max=10)
    face_smoothing: bpy.props.FloatProperty(
        name="Smoothing", description="Temporal smoothing of expression and head pose: Gaussian sigma in fitted "
        "frames (0: none)", default=1.5, min=0.0, max=10.0)
    face_fov: bpy.props.FloatProperty(
        name="Field of view", description="Horizontal field of view of the camera that filmed the face; 0 "
        "estimates it from the fit", default=0.0, min=0.0, max=math.radians(170.0), subtype="ANGLE",
        unit="ROTATION")
    face_box: bpy.props.IntVectorProperty(
        name="Face box", description="Rectangle around the face to fit in the first frame: x, y of its top-left "
        "corner, width, height, in pixels of the video (brows to chin, ear to ear), for frames with several faces "
        "or a face the detector misses; width 0: the detector picks the largest face", size=4, default=(0, 0, 0, 0),
        min=0)


classes = (INVR_PG_settings,)
