"""TensorDict keys shared by the LIBERO env, the PI0 transforms and the recipes.

One place for the schema so that envs/, algos/ and recipes/ agree without
importing each other. algos/ reads only the generic keys (action, reward, done,
group ids) and never imports this module's LIBERO-specific meaning.
"""

# Raw LIBERO observation (written by LiberoEnv, before the PI0 transforms).
OBS = "observation"
AGENTVIEW_IMAGE = (OBS, "agentview_image")  # uint8 [3, H, W], simulator orientation (upside down)
EYE_IN_HAND_IMAGE = (OBS, "eye_in_hand_image")  # uint8 [3, H, W], simulator orientation (upside down)
EEF_POS = (OBS, "eef_pos")  # float32 [3]
EEF_QUAT = (OBS, "eef_quat")  # float32 [4], robosuite order (x, y, z, w)
GRIPPER_QPOS = (OBS, "gripper_qpos")  # float32 [2]

TASK = "task"  # NonTensor str: the language instruction
TASK_ID = "task_id"  # int64 []: index of the task in its suite
INIT_STATE_ID = "init_state_id"  # int64 []: index of the initial state
GROUP_ID = "group_id"  # int64 []: episodes sharing (task, init state) for RIPT share it
SUCCESS = "success"  # bool [1]
STEPS_EXECUTED = "steps_executed"  # int64 [1]: simulator steps run for the last action chunk

# After the PI0 transforms (what PI0 sees).
PI0_IMAGE = (OBS, "image")  # uint8 [3, 224, 224], agentview rotated 180 and resize-with-padded
PI0_WRIST_IMAGE = (OBS, "wrist_image")  # uint8 [3, 224, 224]
PI0_STATE = (OBS, "state")  # float32 [32], normalised and zero-padded
LANG_TOKENS = (OBS, "language_tokens")  # int64 [L]
LANG_MASK = (OBS, "language_attention_mask")  # bool [L]

# Policy outputs.
ACTION = "action"  # executed part: [n_action_steps, 32] normalised/padded (transformed env)
ACTION_CHUNK = "action_chunk"  # full sampled chunk [chunk_size, 32] normalised/padded
